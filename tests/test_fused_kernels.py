"""The fused elementwise kernels equal the PyTorch code they replace on CUDA (RMSNorm with the
residual add, RoPE, SwiGLU's activation). On CPU they run in Triton's interpreter."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
from tameshi.kernels import fused
from tameshi.model.layers import RMSNorm, apply_rope

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter's bf16 conversions are not faithful; the GPU run covers bf16.
DTYPES = [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float16]


def randn(*shape, dtype, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [64, 200])  # a power of two and not
def test_add_rms_norm_equals_add_then_norm(dtype, n):
    norm = RMSNorm(n, 1e-6).to(DEVICE, dtype)
    norm.weight.data = randn(n, dtype=dtype, seed=3) + 1
    x, delta = randn(5, n, dtype=dtype, scale=4), randn(5, n, dtype=dtype, seed=1)
    total, out = fused.add_rms_norm(x, delta, norm.weight, norm.eps)
    assert torch.equal(total, x + delta)
    torch.testing.assert_close(out, norm(x + delta), atol=0, rtol=2e-3)  # a last-bit rsqrt difference at most
    same, out = fused.add_rms_norm(x, None, norm.weight, norm.eps)
    assert same is x
    torch.testing.assert_close(out, norm(x), atol=0, rtol=2e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_in_place_equals_apply_rope(dtype):
    t, heads, dim = 6, 5, 32
    qkv = randn(t, (heads + 2) * dim, dtype=dtype)  # the last 2 "heads" (v) are left alone
    angles = torch.rand(t, dim // 2, generator=torch.Generator().manual_seed(2)) * 50
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)
    qk = qkv[:, : heads * dim].view(t, heads, dim)
    want = apply_rope(qk.clone(), cos, sin)
    v_before = qkv[:, heads * dim :].clone()
    got = fused.rope_(qk, cos, sin)
    assert got.data_ptr() == qkv.data_ptr()  # in place
    # Bit-exact in the interpreter. Compiled, the GPU keeps a product unrounded into the add (FMA): at
    # most one rounding step of the largest product apart (seen on the H100: 4.9e-4 fp16, 2.9e-3 bf16).
    ulp = torch.finfo(dtype).eps * want.abs().max().item() if DEVICE == "cuda" else 0.0
    torch.testing.assert_close(got, want, atol=ulp, rtol=0)
    assert torch.equal(qkv[:, heads * dim :], v_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_equals_silu_times_up(dtype):
    gate_up = randn(3, 2 * 1500, dtype=dtype, scale=3)  # n not a multiple of the block
    gate, up = gate_up.split(1500, dim=-1)
    torch.testing.assert_close(fused.silu_mul(gate_up), F.silu(gate) * up, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(("kv_heads", "head_dim"), [(2, 16), (3, 16)])  # 3 x 16: not a power of two
def test_store_kv_writes_the_slots_of_k_and_v(kv_heads, head_dim):
    gen = torch.Generator().manual_seed(kv_heads)
    t, n_slots, q_size = 5, 40, 4 * head_dim
    qkv = torch.randn(t, q_size + 2 * kv_heads * head_dim, generator=gen).half().to(DEVICE)
    k = qkv[:, q_size : q_size + kv_heads * head_dim].view(t, kv_heads, head_dim)  # strided views
    v = qkv[:, q_size + kv_heads * head_dim :].view(t, kv_heads, head_dim)
    k_cache = torch.zeros(n_slots, kv_heads, head_dim, dtype=torch.float16, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([7, 0, 39, 12, 13], device=DEVICE)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_k[slots], want_v[slots] = k, v
    fused.store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "block"), [(512, 128), (768, 64), (256, 256)])  # 768: a partial tile
def test_add_rms_norm_x16_also_writes_its_output_as_quantize_x_would(dtype, n, block):
    """The same sum and output as add_rms_norm, and the output quantized for the dp2a AWQ kernel bit
    for bit as quantize_x quantizes it (values, scales, sums)."""
    from tameshi.kernels.awq_x16 import quantize_x

    weight = randn(n, dtype=dtype, seed=3) + 1
    x, delta = randn(2, n, dtype=dtype, scale=4), randn(2, n, dtype=dtype, seed=1)
    x[0, 5] = 300.0  # an outlier: its block's scale is not the others'
    for d in (delta, None):
        total, out = fused.add_rms_norm(x, d, weight, 1e-6)
        total_q, out_q, x_q = fused.add_rms_norm_x16(x, d, weight, 1e-6, block)
        assert torch.equal(total_q, total) and torch.equal(out_q, out)
        for got, want in zip(x_q, quantize_x(out, block), strict=True):
            assert torch.equal(got, want)
    with pytest.raises(ValueError, match="power of two"):
        fused.add_rms_norm_x16(x, delta, weight, 1e-6, 96)
