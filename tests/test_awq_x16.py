"""The dp2a one-row AWQ kernel (tameshi.kernels.awq_x16) and its x quantization equal the references.

On CPU the kernels run under TRITON_INTERPRET=1, which runs no PTX: the kernel's stand-in sums the
same products in int32 tensors. The PTX itself is run here by a small interpreter of the few
instructions it uses, against numpy. On a GPU the same tests compile and run the PTX, and
tests/test_gpu.py runs it at the 67B shapes.
"""

import re

import numpy as np
import pytest
import torch

from tameshi.loading.awq import dequantize_gemm, pack_gemm

triton = pytest.importorskip("triton")
from tameshi.kernels.awq_triton import (  # noqa: E402
    MatmulConfig,
    _scratch,
    awq_matmul,
    default_config,
    kernel_constants,
    kpack,
)
from tameshi.kernels.awq_x16 import (  # noqa: E402
    SCALE,
    quantize_x,
    row_pair_ptx,
    x16_config,
    x16_configs,
    x16_fits,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SLOT = [0, 2, 4, 6, 1, 3, 5, 7]  # where x value j of a row is stored: x0 x4 x1 x5 x2 x6 x3 x7


def packed_and_reference(k: int, n: int, group: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // group, n), generator=gen)
    s = (torch.rand(k // group, n, generator=gen) * 0.02 + 0.001).half()
    qweight, qzeros = pack_gemm(q), pack_gemm(z)
    packed = kpack(qweight.to(DEVICE), qzeros.to(DEVICE), s.to(DEVICE), group, paired=True)
    return packed, dequantize_gemm(qweight, qzeros, s, group)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantize_x_rounds_each_block_to_int16(dtype):
    """Each block's largest |x| becomes ±32767, every value rounds to the nearest step of that block
    (half away from zero), values sit in SLOT order, each block's sum is that of its ints; a block of
    zeros gives zeros."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 512, generator=gen) * 3
    x[1, 70] = -400.0  # an outlier in row 1's second block
    x[2, 128:192] = 0.0  # a block of zeros
    x = x.to(dtype)
    q, scales, sums = quantize_x(x.to(DEVICE), 64)
    q, scales, sums = q.cpu(), scales.cpu(), sums.cpu()
    assert q.dtype == torch.int16 and scales.shape == sums.shape == (3, 8)
    natural = q.view(3, 64, 8)[:, :, SLOT].reshape(3, 512).long()  # undo the order
    top = x.float().abs().view(3, 8, 64).amax(-1)
    torch.testing.assert_close(scales[top > 0], top[top > 0] / 32767, rtol=1e-6, atol=0)
    exact = x.float().view(3, 8, 64) / scales[..., None]
    want = torch.where(exact >= 0, torch.floor(exact + 0.5), torch.ceil(exact - 0.5)).view(3, 512).long()
    assert (natural - want).abs().max() <= 1  # the fp32 product x * (32767 / top) may round either way
    assert natural.abs().max() == 32767 and natural.view(3, 8, 64).abs().amax(-1)[top > 0].eq(32767).all()
    assert natural[1, 70] == -32767
    assert not natural[2, 128:192].any() and sums[2, 2] == 0
    assert torch.equal(sums, q.view(3, 8, 64).long().sum(-1).int())
    back = natural.view(3, 8, 64).float() * scales[..., None]
    assert ((back - x.float().view(3, 8, 64)).abs() <= top[..., None] / 32767).all()


def test_quantize_x_needs_whole_blocks():
    with pytest.raises(ValueError, match="divide K"):
        quantize_x(torch.zeros(1, 96, dtype=torch.float16, device=DEVICE), 64)


X16 = dict(fixup=True, x16=True)


@pytest.mark.parametrize(
    ("m", "k", "n", "group", "config", "dtype"),
    [
        (1, 512, 512, 128, MatmulConfig(1, 256, 128, 2, 2, **X16), torch.float16),  # two units a program
        (1, 512, 200, 128, MatmulConfig(1, 128, 64, 2, 1, **X16, depth=2), torch.float16),  # N past the tile
        (1, 512, 256, 64, MatmulConfig(1, 256, 64, 1, 2, **X16, depth=2), torch.bfloat16),  # unsplit, bf16
        (3, 256, 128, 32, MatmulConfig(1, 128, 32, 4, 1, **X16), torch.float16),  # three rows, group 32
        (1, 1024, 384, 128, MatmulConfig(1, 128, 64, 4, 1, **X16, depth=2), torch.float16),  # half groups
    ],
)
def test_x16_kernel_equals_reference(m, k, n, group, config, dtype):
    """Within the x quantization's bound of the fp32 product (an outlier of 40 in x), y in x's dtype
    and in float32; the split-K scratch is left zero."""
    packed, w = packed_and_reference(k, n, group, seed=m + k + n)
    kernel, _ = kernel_constants(config, k, group, dtype, paired=True, n=n)
    assert kernel.fn.__name__ == "_awq_gemv_x16_kernel"
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    x[0, 3] = 40.0
    ref = x.float() @ w
    for out_dtype in (dtype, torch.float32):
        y = awq_matmul(x.to(DEVICE), packed, config, out_dtype=out_dtype)
        device, y = y.device, y.cpu()
        assert y.dtype == out_dtype
        # x's rounding: at most top/65534 a value, over k values of |w| <= max|w|
        bound = k * x.float().abs().max() / 65534 * w.abs().max() + ref.abs().max() * 2**-8
        assert (y.float() - ref).abs().max() <= bound
        rounding = 2**-8 if out_dtype == torch.bfloat16 else 2**-11  # y's own
        assert (y.float() - ref).abs().max() <= (1e-3 + rounding) * ref.abs().max()
    if config.split_k > 1:
        ws, counts = _scratch[device]
        assert not ws.any() and not counts.any()


# the interpreter's numpy casts NaN to int and reduces rows of NaN, and says so
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
def test_nan_in_x_gives_nan_where_the_reference_does():
    """A NaN in a row of x makes that row of y NaN, as the fp32 product does (max, which sets a
    block's scale, drops NaN: the kernel would give finite numbers); other rows are unchanged. Also
    through the RMSNorm that writes x quantized."""
    from tameshi.kernels import fused

    packed, w = packed_and_reference(512, 256, 128, seed=5)
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(5)).half()
    x[0, 300] = float("nan")
    y = awq_matmul(x.to(DEVICE), packed, MatmulConfig(1, 128, 128, 2, 1, **X16)).cpu()
    assert y[0].isnan().all() and y[1].isfinite().all()
    assert (y[1].float() - x[1].float() @ w).abs().max() <= 2e-3 * (x[1].float() @ w).abs().max()
    h = torch.randn(1, 512).half().to(DEVICE)
    weight = torch.ones(512, dtype=torch.float16, device=DEVICE)
    _, normed, x_q = fused.add_rms_norm_x16(h, x[:1].to(DEVICE), weight, 1e-6, 128)
    assert x_q.scales.isnan().all()  # the norm's whole row is NaN
    y_q = awq_matmul(normed, packed, MatmulConfig(1, 128, 128, 2, 1, **X16), x_q=x_q).cpu()
    assert y_q.isnan().all()


def test_x16_default_tiles():
    """x16_config: 256 columns, units of the group's largest of 128/64/32, the most of 8/4/2/1 units a
    program leaving 600 programs (the 67B shapes' best on an H200); only paired words fit."""
    qkv, o = x16_config(10240, 8192, 128), x16_config(8192, 8192, 128)
    gate_up, down = x16_config(44032, 8192, 128), x16_config(8192, 22016, 128)
    assert all(c.x16 and c.block_n == 256 and c.num_warps == 2 and c.block_k == 128 for c in (qkv, o))
    assert (qkv.split_k, o.split_k, gate_up.split_k, down.split_k) == (16, 32, 8, 43)  # 4, 2, 8, 4 units
    assert x16_config(4096, 4096, 64).block_k == 64 and x16_config(4096, 4096, 32).block_k == 32
    assert x16_config(1536, 576, 64).split_k == 9  # 9 units, 6 column tiles: one a program
    assert default_config(1, 8192, 8192, 128, x16=True) == o
    assert x16_fits(8192, 128, True) and not x16_fits(8192, 128, False) and not x16_fits(8192, 16, True)
    for k, group in ((8192, 128), (22016, 64)):
        for cfg in x16_configs(k, group):
            assert cfg.x16 and k % (cfg.block_k * cfg.split_k) == 0


def test_x16_tile_shape_is_checked():
    with pytest.raises(ValueError, match="dp2a tile"):
        kernel_constants(MatmulConfig(1, 256, 128, 4, 4, **X16), 8192, 128, torch.float16, True)  # 2 warps
    with pytest.raises(ValueError, match="dp2a tile"):
        kernel_constants(
            MatmulConfig(1, 128, 128, 4, 1, **X16), 8192, 64, torch.float16, True
        )  # past a group
    gen = torch.Generator().manual_seed(0)
    codes = pack_gemm(torch.randint(0, 16, (256, 128), generator=gen))
    natural = kpack(codes.to(DEVICE), pack_gemm(torch.zeros(2, 128, dtype=torch.int64)).to(DEVICE),
                    torch.ones(2, 128, dtype=torch.float16, device=DEVICE), 128)  # fmt: skip
    with pytest.raises(ValueError, match="paired words"):
        awq_matmul(
            torch.zeros(1, 256, dtype=torch.float16, device=DEVICE),
            natural,
            MatmulConfig(1, 128, 128, 2, 1, **X16),
        )


class RowPair:
    """Runs row_pair_ptx's instructions on numpy uint32 registers (one thread)."""

    def __init__(self, memory: bytes):
        self.memory = memory
        self.regs: dict[str, np.uint32] = {}

    def value(self, operand: str, args: list) -> np.uint32:
        operand = operand.strip()
        if operand.startswith("$"):
            return args[int(operand[1:])]
        if operand.startswith("0x"):
            return np.uint32(int(operand, 16))
        if operand.isdigit():
            return np.uint32(int(operand))
        return self.regs[operand]

    def run(self, ptx: str, args: list) -> list:
        outputs: dict[int, np.uint32] = {}
        for line in ptx.splitlines():
            line = line.strip().rstrip(";")
            if not line or line in "{}" or line.startswith(".reg"):
                continue
            op, rest = line.split(None, 1)
            if op == "ld.global.v4.b32":  # {a, b, c, d}, [$i] or [$i+offset]
                dests, operand, offset = re.fullmatch(r"\{(.*)\}, \[\$(\d+)(?:\+(\d+))?\]", rest).groups()
                at = int(args[int(operand)]) + int(offset or 0)
                words = np.frombuffer(self.memory, dtype=np.uint32, count=4, offset=at)
                for name, word in zip(dests.split(","), words, strict=True):
                    self.regs[name.strip()] = np.uint32(word)
                continue
            dest, *srcs = [part.strip() for part in rest.split(",")]
            vals = [self.value(src, args) for src in srcs]
            if op == "mov.b32":
                result = vals[0]
            elif op == "shr.u32":
                result = np.uint32(int(vals[0]) >> int(vals[1]))
            elif op == "and.b32":
                result = np.uint32(int(vals[0]) & int(vals[1]))
            elif op in ("dp2a.lo.s32.u32", "dp2a.hi.s32.u32"):
                a, b, c = (int(v) for v in vals)
                halves = [np.int16(np.uint16(a & 0xFFFF)), np.int16(np.uint16(a >> 16))]
                first = 0 if op.startswith("dp2a.lo") else 2
                total = np.int64(np.int32(np.uint32(c)))
                for i in range(2):
                    total += int(halves[i]) * ((b >> (8 * (first + i))) & 0xFF)
                result = np.uint32(np.int64(total) & 0xFFFFFFFF)
            else:
                raise AssertionError(f"an instruction this interpreter does not know: {op}")
            if dest.startswith("$"):
                outputs[int(dest[1:])] = result
            else:
                self.regs[dest] = result
        return [np.int32(outputs[i]) for i in sorted(outputs)]


def test_row_pair_ptx_run_by_an_interpreter_equals_numpy():
    """The PTX's sums for 4 columns of a row pair equal Σ codes · x over both rows: the masks, shifts,
    dp2a halves and SLOT order agree with kpack's paired nibbles."""
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 16, size=(16, 4))  # 2 rows of 8 codes (K), 4 columns
    x = rng.integers(-32767, 32768, size=16)
    words = np.zeros((2, 4), dtype=np.uint32)
    for j in range(8):  # paired nibbles: code j in nibble j // 2 + 4 (j % 2)
        nibble = j // 2 + 4 * (j % 2)
        for r in range(2):
            words[r] |= (codes[8 * r + j] << (4 * nibble)).astype(np.uint32)
    stored = np.zeros(16, dtype=np.int16)
    for r in range(2):
        for j in range(8):
            stored[8 * r + SLOT[j]] = x[8 * r + j]
    memory = b"\0" * 64 + stored.tobytes()
    args = [np.uint32(0)] * 4 + list(words[0]) + list(words[1]) + [np.uint64(64)] * 4
    sums = RowPair(memory).run(row_pair_ptx(), args)
    assert sums == [np.int32(v) for v in (codes * x[:, None]).sum(0)]
    assert SCALE.value == 32767.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_x_quantized_by_its_producer_runs_the_dp2a_kernel(dtype):
    """awq_matmul with x_q (x quantized already, as the norm and attention kernels write it) runs one
    row on the dp2a kernel for fp16 x too, with no quantize_x launch, and gives the numbers it gives
    after quantize_x; without x_q fp16 x keeps the streamed kernel. More rows ignore x_q."""
    from tameshi.kernels import awq_triton, awq_x16

    k, n, group = 512, 256, 128
    packed, w = packed_and_reference(k, n, group, seed=9)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(9)).to(dtype).to(DEVICE)
    x_q = quantize_x(x, 128)
    chosen, quantized = [], []
    real_launch, real_quantize = awq_triton.launch, awq_x16.quantize_x
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            awq_triton, "launch", lambda x, p, cfg, *a: chosen.append(cfg) or real_launch(x, p, cfg, *a)
        )
        mp.setattr(awq_x16, "quantize_x", lambda *a: quantized.append(a) or real_quantize(*a))
        given = awq_matmul(x, packed, x_q=x_q)
        assert chosen[-1].x16 and not quantized
        plain = awq_matmul(x, packed)  # fp16: the streamed kernel; bf16: dp2a after quantize_x
        assert chosen[-1].x16 == (dtype == torch.bfloat16) and len(quantized) == (dtype == torch.bfloat16)
        after = awq_x16.launch_x16  # the same tile after quantize_x: the same bits
        y = torch.empty_like(given)
        ws, counts = awq_triton.split_k_scratch(x.device, n, n // 128)
        after(x, packed, chosen[0], y, ws, counts)
        assert torch.equal(y, given)
        awq_matmul(x.expand(2, k).contiguous(), packed, x_q=x_q)
        assert not chosen[-1].x16
    ref = x.float().cpu() @ w
    rounding = 2**-8 if dtype == torch.bfloat16 else 2**-11  # y's own
    for out in (given, plain):
        assert (out.float().cpu() - ref).abs().max() <= (1e-3 + rounding) * ref.abs().max()


def test_awq_linear_asks_for_x_quantized_only_for_one_row_on_cuda():
    """AWQLinear.x16_block: None on CPU, for several rows, batch-invariant, or TAMESHI_AWQ_X16=0;
    else its group's unit (so the norm and attention kernels quantize x for it)."""
    from tameshi.loading.awq import AWQConfig
    from tameshi.model.linear import AWQLinear, Linear

    layer = AWQLinear(512, [256], AWQConfig(group_size=128, zero_point=True, version="gemm"))
    packed, _ = packed_and_reference(512, 256, 128, seed=2)
    assert Linear(512, [256]).x16_block(torch.zeros(1, 512)) is None
    assert layer.x16_block(torch.zeros(1, 512)) is None  # CPU
    if DEVICE != "cuda":
        return
    layer.kernel_weight = packed
    one = torch.zeros(1, 512, dtype=torch.float16, device=DEVICE)
    assert layer.x16_block(one) == 128
    assert layer.x16_block(torch.zeros(2, 512, dtype=torch.float16, device=DEVICE)) is None
    layer.batch_invariant = True
    assert layer.x16_block(one) is None
