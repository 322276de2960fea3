"""The Triton AWQ kernels equal the PyTorch reference (`dequantize_gemm`).

On CPU they run under TRITON_INTERPRET=1 (set by conftest.py before Triton is imported) at small
shapes; on a GPU the same tests compile them. The 67B shapes run in tests/test_gpu.py.
"""

import pytest
import torch

from tameshi.loading.awq import dequantize_gemm, pack_gemm, unpack_gemm

triton = pytest.importorskip("triton")
from tameshi.kernels import awq_triton  # noqa: E402
from tameshi.kernels.awq_triton import (  # noqa: E402
    MatmulConfig,
    _scratch,
    awq_dequantize,
    awq_matmul,
    default_config,
    invariant_config,
    kdequantize_reference,
    kernel_constants,
    kpack,
    launch,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_awq(k: int, n: int, group: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // group, n), generator=gen)
    s = (torch.rand(k // group, n, generator=gen) * 0.02 + 0.001).half()
    return pack_gemm(q), pack_gemm(z), s


def packed_and_reference(k: int, n: int, group: int, seed: int, paired: bool = False):
    """The kernel layout on DEVICE, and the checkpoint tensors' reference W^T [K, N] (fp32, CPU)."""
    qweight, qzeros, scales = random_awq(k, n, group, seed)
    packed = kpack(qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), group, paired)
    return packed, dequantize_gemm(qweight, qzeros, scales, group)


@pytest.mark.parametrize("paired", [False, True])
def test_kernel_layout_round_trips_the_checkpoint(paired):
    qweight, qzeros, scales = random_awq(256, 48, 64, seed=7)
    packed = kpack(qweight, qzeros, scales, 64, paired)
    assert torch.equal(kdequantize_reference(packed), dequantize_gemm(qweight, qzeros, scales, 64))
    # code 1 of each word in nibble 1, or (paired) in nibble 4: the high half's lowest
    assert torch.equal((packed.qweight >> (16 if paired else 4)) & 0xF, unpack_gemm(qweight)[1::8].int())


CASES = [  # m, k, n, group, config (None = the default for the shape)
    (1, 256, 64, 128, None),
    (1, 256, 96, 64, MatmulConfig(1, 64, 32, 4)),  # CUDA-core path; N not a multiple of the tile
    (3, 128, 128, 32, MatmulConfig(16, 64, 32, 2)),
    (16, 256, 96, 64, MatmulConfig(16, 64, 64, 4)),  # tensor-core path; split K
    (20, 128, 64, 128, MatmulConfig(32, 32, 64, 1)),  # block_k inside one group
    (5, 384, 64, 384, None),  # group -1 (whole K) arrives as group = K
    (3, 128, 64, 32, MatmulConfig(1, 32, 32, 1)),  # CUDA-core path, one program row per x row
    (1, 256, 64, 64, MatmulConfig(1, 64, 64, 2, by_word=True)),  # each word loaded once
    (16, 256, 64, 128, MatmulConfig(16, 64, 128, 2, by_word=True)),
    (40, 256, 128, 128, None),  # batched decode: one 64-row tile, rows masked; K split in two
    (1, 512, 96, 128, None),  # one row: a program's two blocks as one tensor
    # codes to floats by exponent bits instead of conversions: one row, each of the 8 nibbles
    (1, 256, 96, 64, MatmulConfig(1, 64, 64, 2, by_word=True, magic=True)),
    (20, 256, 64, 128, MatmulConfig(32, 32, 64, 2, magic=True)),  # the tensor-core path (fp16)
    (16, 256, 64, 128, MatmulConfig(16, 64, 128, 2, by_word=True, magic=True)),
    (20, 256, 64, 64, MatmulConfig(32, 64, 64, 2, by_word=True, magic=True)),  # words spread over 64 rows
    (40, 256, 256, 128, MatmulConfig(64, 128, 128, 2, by_word=True, magic=True)),  # the 64-row default's form
    # codes two at a time by exponent bits, kept in the order the joins leave them (fp16 only; bf16
    # takes the plain tile); then also dequantized in fp16 and summed by the dot itself
    (20, 256, 64, 128, MatmulConfig(32, 32, 64, 2, pairs=True)),
    (40, 256, 256, 128, MatmulConfig(64, 128, 128, 2, pairs=True)),
    (5, 256, 96, 64, MatmulConfig(16, 64, 64, 2, pairs=True, scaled=True)),  # N not a multiple of the tile
    (40, 256, 256, 128, MatmulConfig(64, 128, 128, 2, pairs=True, scaled=True)),
    # y^T = W x^T (swap): N not a multiple of the tile, and the 64-row form
    (5, 256, 96, 64, MatmulConfig(16, 64, 64, 2, pairs=True, scaled=True, swap=True)),
    (40, 256, 256, 128, MatmulConfig(64, 128, 128, 2, pairs=True, scaled=True, swap=True)),
    # one row, a program's K blocks loaded as one tensor
    (1, 512, 96, 64, MatmulConfig(1, 64, 64, 2, by_word=True, magic=True, whole_split=True)),
    (2, 512, 64, 128, MatmulConfig(1, 32, 128, 1, by_word=True, magic=True, whole_split=True)),
]


@pytest.mark.parametrize("paired", [False, True], ids=["nibbles", "paired"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n", "group", "config"), CASES)
def test_matmul_equals_reference(m, k, n, group, config, dtype, paired):
    packed, w = packed_and_reference(k, n, group, seed=m + k + n, paired=paired)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype).to(DEVICE)
    y = awq_matmul(x, packed, config)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = x.cpu().float() @ w
    # Only the output rounding and fp32 summation order differ from the reference; or, where the
    # one-row default takes packed fp16 products, their rounding (test_packed_fp16_products_...).
    cfg = config or default_config(m, n, k, group, stream=dtype == torch.float16 and paired)
    half2 = (cfg.half2 or cfg.stream) and dtype == torch.float16
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-9 if half2 else 2**-11
    torch.testing.assert_close(y.cpu().float(), ref, rtol=eps, atol=eps * ref.abs().max().item())


HALF2 = dict(by_word=True, magic=True, whole_split=True, fixup=True, half2=True)


@pytest.mark.parametrize("paired", [False, True], ids=["nibbles", "paired"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("m", "k", "n", "group", "config"),
    [
        (1, 512, 96, 64, MatmulConfig(1, 64, 64, 2, **HALF2)),  # N not a multiple of the tile
        (2, 512, 256, 128, MatmulConfig(1, 256, 128, 4, **HALF2)),  # the one-row default's form
    ],
)
def test_packed_fp16_products_equal_reference(m, k, n, group, config, dtype, paired):
    """The one-row kernel's products in packed fp16 (MatmulConfig.half2; bf16 x keeps fp32 products).
    fp16 rounds each product and the sums of 8 per half-word pair (2e-3 of the largest output, as
    the GPU tests at the 67B shapes): a wrong nibble, zero or x is off by far more."""
    packed, w = packed_and_reference(k, n, group, seed=m + k + n, paired=paired)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype).to(DEVICE)
    y = awq_matmul(x, packed, config)
    ref = x.cpu().float() @ w
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-9
    torch.testing.assert_close(y.cpu().float(), ref, rtol=eps, atol=eps * ref.abs().max().item())


def test_packed_fp16_products_take_outlier_activations():
    """Activations of several hundred (LLMs' "massive activations" sit in a few channels) stay finite
    and as exact as the rest: a half's fp16 sum holds 8 products of |c - z| <= 15."""
    packed, w = packed_and_reference(512, 256, 128, seed=9, paired=True)
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(9))
    x[0, ::61] = 900.0
    x = x.half().to(DEVICE)
    y = awq_matmul(x, packed, MatmulConfig(1, 256, 128, 4, **HALF2)).cpu().float()
    ref = x.cpu().float() @ w
    assert y.isfinite().all()
    torch.testing.assert_close(y, ref, rtol=2**-9, atol=2**-9 * ref.abs().max().item())


STREAM = dict(by_word=True, magic=True, fixup=True, stream=True)


@pytest.mark.parametrize(
    ("m", "k", "n", "group", "config"),
    [
        (1, 512, 256, 128, MatmulConfig(1, 256, 128, 2, 2, **STREAM)),  # two units a program, one ahead
        (1, 512, 384, 128, MatmulConfig(1, 256, 128, 1, 2, **STREAM)),  # N not a multiple of the tile
        (2, 512, 128, 64, MatmulConfig(1, 128, 32, 4, 1, **STREAM, depth=2)),  # two ahead; two rows
        (1, 512, 512, 128, MatmulConfig(1, 512, 64, 1, 4, **STREAM, depth=2)),  # 8 units, 4 warps
        (1, 256, 128, 32, MatmulConfig(1, 128, 16, 8, 1, **STREAM)),  # one unit a program, split 8
    ],
)
def test_streamed_one_row_kernel_equals_reference(m, k, n, group, config):
    """The streamed one-row kernel (awq_gemv; fp16 x, paired words) against the reference. Its
    products are the packed fp16 ones of half2, as exact (2**-9 of the largest output). On CPU this
    runs the interpreter's fp16 form of its arithmetic; the PTX form compiles in
    test_default_tiles_compile_for_sm90 and runs in tests/test_gpu.py."""
    packed, w = packed_and_reference(k, n, group, seed=m + k + n, paired=True)
    kernel, consts = kernel_constants(config, k, group, torch.float16, paired=True, n=n)
    assert kernel.fn.__name__ == "_awq_gemv_stream_kernel"
    assert consts["UNITS"] * consts["SPLIT_K"] * config.block_k == k and consts["EVEN"] == (
        n % config.block_n == 0
    )
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).half().to(DEVICE)
    y = awq_matmul(x, packed, config)
    ref = x.cpu().float() @ w
    torch.testing.assert_close(y.cpu().float(), ref, rtol=2**-9, atol=2**-9 * ref.abs().max().item())
    if DEVICE == "cpu":  # the interpreter runs programs in order; a GPU adds split K in any order
        assert torch.equal(awq_matmul(x, packed, config), y)
    ws, counts = _scratch[x.device]
    assert not ws.any() and not counts.any()
    y32 = awq_matmul(x, packed, config, out_dtype=torch.float32)  # tensor parallel's partial sums
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.cpu(), ref, rtol=2**-9, atol=2**-9 * ref.abs().max().item())


@pytest.mark.parametrize(
    "config",
    [MatmulConfig(1, 256, 128, 2, 2, **STREAM), MatmulConfig(1, 128, 32, 4, 2, fixup=True, mma=True)],
    ids=["streamed", "tensor-core"],
)
def test_one_row_kernels_take_outlier_activations(config):
    packed, w = packed_and_reference(512, 256, 128, seed=9, paired=True)
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(9))
    x[0, ::61] = 900.0
    x = x.half().to(DEVICE)
    y = awq_matmul(x, packed, config).cpu().float()
    ref = x.cpu().float() @ w
    assert y.isfinite().all()
    torch.testing.assert_close(y, ref, rtol=2**-9, atol=2**-9 * ref.abs().max().item())


@pytest.mark.parametrize("case", ["bf16", "nibbles", "unaligned"])
def test_streamed_one_row_kernel_falls_back_where_it_cannot_read(case):
    """bf16 x, words in natural nibble order, and x not 16-byte aligned (a row of a larger
    buffer) go to the default one-row kernel with the same blocks, and still equal the reference."""
    k, n, group = 512, 256, 128
    packed, w = packed_and_reference(k, n, group, seed=4, paired=case != "nibbles")
    cfg = MatmulConfig(1, 256, 128, 2, 2, **STREAM)
    dtype = torch.bfloat16 if case == "bf16" else torch.float16
    buffer = torch.randn(1, k + 1, generator=torch.Generator().manual_seed(4)).to(dtype).to(DEVICE)
    x = buffer[:, 1:] if case == "unaligned" else buffer[:, :k].contiguous()
    assert x.is_contiguous() and (x.data_ptr() % 16 != 0) == (case == "unaligned")
    y = awq_matmul(x, packed, cfg)
    ref = x.cpu().float() @ w
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-11
    torch.testing.assert_close(y.cpu().float(), ref, rtol=eps, atol=eps * ref.abs().max().item())


def test_streamed_tile_shape_is_checked():
    packed, _ = packed_and_reference(256, 256, 128, seed=0, paired=True)
    x = torch.zeros(1, 256, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="128 columns a warp"):
        awq_matmul(x, packed, MatmulConfig(1, 256, 128, 1, 4, **STREAM))


def test_stream_configs_divide_k():
    from tameshi.kernels.awq_gemv import stream_configs

    for k, group in [(8192, 128), (22016, 128), (4096, 64), (11008, 128), (576, 64), (256, 32)]:
        configs = stream_configs(k, group)
        assert configs
        for c in configs:
            assert group % c.block_k == 0 and k % (c.block_k * c.split_k) == 0
            assert c.num_warps * 128 == c.block_n and k // c.split_k <= 1024


@pytest.mark.parametrize("config", [MatmulConfig(1, 64, 64, 1, by_word=True), MatmulConfig(16, 64, 64, 1)])
def test_float32_output_is_the_unrounded_accumulator(config):
    """out_dtype=float32 (tensor parallel's partial sums) hands back the fp32 accumulator: as close to
    the reference as fp32 summation order allows, far closer than one fp16 rounding."""
    m = config.block_m
    packed, w = packed_and_reference(256, 64, 64, seed=3)
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(m)).half().to(DEVICE)
    y = awq_matmul(x, packed, config, out_dtype=torch.float32)
    assert y.dtype == torch.float32
    ref = x.cpu().float() @ w
    scale = ref.abs().max().item()
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=1e-5 * scale)
    rounded = awq_matmul(x, packed, config).cpu().float()
    assert (rounded - ref).abs().max() > 10 * (y.cpu() - ref).abs().max()


def test_split_k_leaves_its_scratch_zero():
    """Split K sums in a shared float32 workspace that the last split of each tile zeroes again: calls
    repeat exactly, and between calls workspace and tile counters are all zero."""
    packed, w = packed_and_reference(256, 96, 64, seed=5)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(5)).half().to(DEVICE)
    for cfg in (
        MatmulConfig(1, 64, 64, 2, by_word=True, fixup=True),
        MatmulConfig(16, 64, 64, 4, fixup=True),
    ):
        rows = x[:1] if cfg.block_m == 1 else x
        first = awq_matmul(rows, packed, cfg)
        again = awq_matmul(rows, packed, cfg)
        assert torch.equal(first, again)
        ref = rows.cpu().float() @ w
        torch.testing.assert_close(
            first.cpu().float(), ref, rtol=2**-11, atol=2**-11 * ref.abs().max().item()
        )
        ws, counts = _scratch[x.device]
        assert not ws.any() and not counts.any()


@pytest.mark.parametrize(
    "config",
    [
        MatmulConfig(16, 64, 64, 1),
        MatmulConfig(16, 64, 64, 4),  # atomics into y
        MatmulConfig(16, 64, 64, 4, fixup=True),
        MatmulConfig(64, 64, 128, 2, pairs=True, scaled=True),
        MatmulConfig(64, 128, 128, 2, by_word=True, magic=True),
    ],
)
@pytest.mark.parametrize("paired", [False, True], ids=["nibbles", "paired"])
def test_rows_past_m_are_left_alone(config, paired):
    """A tile's rows past M are masked: nothing is written there, in y or in the workspace. Those rows
    hold a subnormal float, which even a stray atomic add of 0.0 flushes to zero."""
    m, k, n = 3, 256, 64
    packed, w = packed_and_reference(k, n, 128, seed=11, paired=paired)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(11)).half().to(DEVICE)
    tiny = 1e-40
    y = torch.full((config.block_m, n), tiny, dtype=torch.float32, device=DEVICE)
    ws = torch.full((config.block_m, n), tiny, dtype=torch.float32, device=DEVICE)
    if config.split_k > 1:
        (ws if config.fixup else y)[:m] = 0.0
    counts = torch.zeros(64, dtype=torch.int32, device=DEVICE)
    launch(x, packed, config, y, ws, counts)
    ref = x.cpu().float() @ w
    torch.testing.assert_close(y[:m].cpu(), ref, rtol=2**-11, atol=2**-11 * ref.abs().max().item())
    assert (y[m:] == tiny).all() and (ws[m:] == tiny).all()
    assert not counts.any()


@pytest.mark.parametrize("by_word", [False, True], ids=["rows", "by_word"])
@pytest.mark.parametrize("paired", [False, True], ids=["nibbles", "paired"])
@pytest.mark.parametrize("group", [32, 128, 40])  # 40: a group of whole words that 16 does not divide
def test_dequantize_equals_reference(group, paired, by_word):
    k = 320 if group == 40 else 256
    packed, ref = packed_and_reference(k, 192, group, seed=group, paired=paired)
    w = awq_dequantize(packed, torch.float16, by_word=by_word)
    assert torch.equal(w.cpu(), ref.half())  # one rounding of the same fp32 value


def test_default_config_splits_k_evenly():
    decode = default_config(1, 8192, 8192, 128)
    assert decode.block_m == 1 and decode.split_k == 32 and decode.half2  # 64 blocks of K, 2 per program
    down = default_config(1, 8192, 22016, 128)  # 172 blocks: the split must divide them
    assert 172 % down.split_k == 0 and 172 // down.split_k == 2
    assert default_config(1, 1536, 576, 64).split_k == 9  # 9 blocks: one per program (a power of two)
    few = default_config(16, 8192, 8192, 128)  # 64 blocks, 8 per program
    assert (few.block_m, few.split_k, few.swap) == (16, 8, True)
    few_down = default_config(4, 8192, 22016, 128)  # 172 blocks: 4 per program, the divisor nearest 8
    assert few_down.split_k == 43
    batched = default_config(64, 8192, 22016, 128)  # batched decode: 64-row tiles, 128 of them, K split in 4
    assert (batched.block_m, batched.block_n, batched.split_k, batched.num_stages) == (64, 64, 4, 2)
    qkv = default_config(64, 10240, 8192, 128)  # 160 column tiles: split to 300 programs or more
    assert (qkv.block_n, qkv.split_k, qkv.num_stages) == (64, 2, 3)
    assert qkv.pairs and qkv.scaled and qkv.swap
    gate_up = default_config(40, 44032, 8192, 128)  # 688 tiles, enough alone
    assert (gate_up.block_n, gate_up.split_k) == (64, 1)
    narrow = default_config(64, 4096, 11008, 128)  # 7B down: 64 tiles, 86 blocks: 43 is the least divisor
    assert (narrow.block_n, narrow.split_k) == (64, 43)


def test_one_row_default_streams_fp16_on_paired_words():
    """With TAMESHI_AWQ_X16=0, one row of fp16 x on paired words takes the streamed tile (units of 64
    of K, four a program or two where four leave too few programs); bf16 x, natural nibble order and x
    off 16-byte alignment take the default one-row kernel. By default, those two take the dp2a kernel
    instead (tests/test_awq_x16.py)."""
    qkv = default_config(1, 10240, 8192, 128, stream=True)  # 128 units, 20 column tiles: 640 programs at 4
    assert qkv.stream and qkv.depth == 1
    assert (qkv.block_n, qkv.num_warps, qkv.block_k, qkv.split_k) == (512, 4, 64, 32)
    assert default_config(1, 8192, 8192, 128, stream=True).split_k == 64  # 512 programs at 4: two a program
    assert default_config(1, 8192, 22016, 128, stream=True).split_k == 86  # 344 units
    odd = default_config(1, 4096, 4160, 32, stream=True)  # 130 units of 32: two a program
    assert (odd.block_k, odd.split_k) == (32, 65)
    assert not default_config(1, 8192, 8192, 128).stream
    assert not default_config(4, 8192, 8192, 128, stream=True).stream
    assert default_config(1, 8192, 8192, 128, stream=True, x16=True).x16

    def kinds(env: str) -> list[str]:
        chosen = []
        real_launch = awq_triton.launch
        with pytest.MonkeyPatch.context() as mp:
            record = lambda x, packed, cfg, *a: chosen.append(cfg) or real_launch(x, packed, cfg, *a)  # noqa: E731
            mp.setattr(awq_triton, "launch", record)
            mp.setenv("TAMESHI_AWQ_X16", env)
            paired, w = packed_and_reference(512, 256, 128, seed=5, paired=True)
            nibbles, _ = packed_and_reference(512, 256, 128, seed=5)
            x = torch.randn(1, 520, generator=torch.Generator().manual_seed(5)).half().to(DEVICE)
            cases = [(x[:, :512], paired), (x[:, :512].bfloat16(), paired), (x[:, :512], nibbles)]
            cases.append((x[:, 4:516], paired))  # 8 bytes past a 16-byte boundary
            for case_x, packed in cases:
                y, ref = awq_matmul(case_x, packed).cpu().float(), case_x.cpu().float() @ w
                torch.testing.assert_close(y, ref, rtol=2**-8, atol=2**-8 * ref.abs().max().item())
        return ["x16" if c.x16 else "stream" if c.stream else "default" for c in chosen]

    assert kinds("0") == ["stream", "default", "default", "default"]
    assert kinds("1") == ["stream", "x16", "default", "x16"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_invariant_config_equals_reference_at_every_row_count(dtype):
    """The batch-invariant tiles (16, 64 and 128 rows; split K in two) equal the reference, and each
    row is the same whatever the row count. (Bit for bit at 67B shapes on a GPU: test_gpu.py.)"""
    k, n, group = 256, 96, 64
    packed, w = packed_and_reference(k, n, group, seed=3, paired=True)
    x = torch.randn(150, k, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    ref = x.cpu().float() @ w
    every = None
    for m in (150, 70, 17, 1):
        cfg = invariant_config(m, n, k, group, dtype)
        assert cfg.split_k == 2 and cfg.block_m == (
            64 if dtype == torch.bfloat16 else 128 if m > 64 else 64 if m > 16 else 16
        )
        y = awq_matmul(x[:m], packed, cfg).cpu()
        eps = 2**-8 if dtype == torch.bfloat16 else 2**-11
        torch.testing.assert_close(y.float(), ref[:m], rtol=eps, atol=eps * ref.abs().max().item())
        every = y if every is None else every
        assert torch.equal(y, every[:m]), m


def test_invariant_config_depends_on_the_layer_not_the_rows():
    for k, n in [(8192, 10240), (8192, 8192), (8192, 44032), (22016, 8192), (4096, 11008), (11008, 4096)]:
        configs = {m: invariant_config(m, n, k, 128, torch.float16) for m in (1, 16, 17, 64, 65, 2048)}
        assert {(c.block_n, c.block_k, c.split_k) for c in configs.values()} == {
            (configs[1].block_n, configs[1].block_k, configs[1].split_k)
        }
        assert configs[1].split_k in (1, 2) and all(c.swap and c.scaled for c in configs.values())
    assert invariant_config(1, 44032, 8192, 128, torch.float16).split_k == 1  # 688 tiles: enough alone
    assert invariant_config(1, 8192, 22016, 128, torch.float16).split_k == 2  # 172 blocks, 128 tiles


def test_shape_mismatch_is_refused():
    packed, _ = packed_and_reference(128, 64, 32, seed=0)
    with pytest.raises(ValueError, match="weight is"):
        awq_matmul(torch.zeros(1, 256, dtype=torch.float16, device=DEVICE), packed)


def test_default_tiles_compile_for_sm90():
    """Every default tile over 67B, 7B, small and tensor-parallel shapes, groups 32-128, compiles for
    an sm_90 GPU with this machine's Triton (its own compiler and ptxas; no GPU needed). The pairs
    tile 32 x 32 did not, and that was first seen on two H200s."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia")
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("awq_tiles_compile.py")
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 failed" in run.stdout
