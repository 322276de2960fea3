"""The Triton paged decode attention equals its PyTorch reference, and the reference equals plain
attention over each sequence's own keys. On CPU the kernel runs in Triton's interpreter."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
from tameshi.kernels import paged_attention
from tameshi.kernels.paged_attention import paged_decode_attention, paged_decode_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_pool(lens, n_heads, n_kv, dim, block_size, width, seed):
    gen = torch.Generator().manual_seed(seed)
    n_blocks = len(lens) * width + 3
    k = torch.randn(n_blocks * block_size, n_kv, dim, generator=gen)
    v = torch.randn(n_blocks * block_size, n_kv, dim, generator=gen)
    perm = torch.randperm(n_blocks, generator=gen)  # blocks scattered over the pool
    tables = torch.zeros(len(lens), width, dtype=torch.int32)
    for i, n in enumerate(lens):
        used = -(-n // block_size)
        tables[i, :used] = perm[i * width : i * width + used].int()
    q = torch.randn(len(lens), n_heads, dim, generator=gen)
    return q, k, v, tables, torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize(("n_heads", "n_kv"), [(4, 4), (8, 2), (4, 1)])
def test_reference_equals_attention_per_sequence(n_heads, n_kv):
    lens = [1, 17, 40]
    q, k, v, tables, ctx = random_pool(lens, n_heads, n_kv, 16, 8, 5, seed=n_heads)
    out = paged_decode_reference(q, k, v, tables, ctx, 8)
    for i, n in enumerate(lens):
        slots = torch.cat([torch.arange(b * 8, b * 8 + 8) for b in tables[i].tolist()])[:n]
        keys = k[slots].transpose(0, 1).repeat_interleave(n_heads // n_kv, 0)
        values = v[slots].transpose(0, 1).repeat_interleave(n_heads // n_kv, 0)
        want = F.scaled_dot_product_attention(q[i][:, None], keys, values)[:, 0]
        torch.testing.assert_close(out[i], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("n_heads", "n_kv", "dim", "chunk", "splits"),
    [(8, 2, 32, 32, 2), (4, 4, 16, 16, 4), (4, 2, 16, 64, 16), (8, 1, 16, 16, 1)],
)
def test_kernel_equals_reference(monkeypatch, n_heads, n_kv, dim, chunk, splits):
    # chunks of one block and of several; splits that take several chunks each, and one chunk or none
    monkeypatch.setattr(paged_attention, "CHUNK", chunk)
    monkeypatch.setattr(paged_attention, "SPLITS", splits)
    block_size, width = 16, 6
    lens = [1, 16, 33, 70, 96]  # one token, whole blocks, partial blocks and chunks, several rounds
    q, k, v, tables, ctx = random_pool(lens, n_heads, n_kv, dim, block_size, width, seed=dim)
    q, k, v = (t.half().to(DEVICE) for t in (q, k, v))
    got = paged_decode_attention(q, k, v, tables.to(DEVICE), ctx.to(DEVICE), block_size)
    want = paged_decode_reference(
        q.float(), k.float(), v.float(), tables.to(DEVICE), ctx.to(DEVICE), block_size
    )
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, atol=2e-3, rtol=2e-3)


def test_kernel_gives_a_sequence_the_same_bits_alone_and_in_a_batch():
    """The splits do not depend on the batch, so neither do a sequence's sums (batched decode equals
    solo decode, token for token)."""
    block_size, width = 16, 6
    lens = [5, 70, 96]
    q, k, v, tables, ctx = random_pool(lens, 8, 2, 32, block_size, width, seed=3)
    q, k, v, tables, ctx = (
        q.half().to(DEVICE),
        k.half().to(DEVICE),
        v.half().to(DEVICE),
        tables.to(DEVICE),
        ctx.to(DEVICE),
    )
    batched = paged_decode_attention(q, k, v, tables, ctx, block_size)
    for i in range(len(lens)):
        alone = paged_decode_attention(q[i : i + 1], k, v, tables[i : i + 1], ctx[i : i + 1], block_size)
        assert torch.equal(alone[0], batched[i])


def test_kernel_x16_also_writes_its_output_as_quantize_x_would():
    """paged_decode_attention_x16: the same output, and each head's output quantized as one block of
    the dp2a AWQ kernel's x, bit for bit as quantize_x quantizes the output [B, H·D]."""
    from tameshi.kernels.awq_x16 import quantize_x
    from tameshi.kernels.paged_attention import paged_decode_attention_x16

    n_heads, dim, block_size = 4, 32, 16
    q, k, v, tables, ctx = random_pool([1, 40], n_heads, 2, dim, block_size, 4, seed=7)
    q, k, v = (t.half().to(DEVICE) for t in (q, k, v))
    q[1, 2, 3] = 80.0  # one head's scores far from the others'
    args = (q, k, v, tables.to(DEVICE), ctx.to(DEVICE), block_size)
    out, x_q = paged_decode_attention_x16(*args)
    assert torch.equal(out, paged_decode_attention(*args))
    for got, want in zip(x_q, quantize_x(out.reshape(2, -1), dim), strict=True):
        assert torch.equal(got, want)
