"""The tensor-core one-row AWQ kernel (tameshi.kernels.awq_mma) equals the PyTorch reference.

On CPU the kernel runs under TRITON_INTERPRET=1, which runs no PTX: its stand-in sum takes the same
grid, lanes and stores. The PTX itself is checked here by running it: a small interpreter executes
program_ptx's instructions for one warp in lockstep, the mma by the PTX ISA's fragment layout for
m16n8k16, on a word layout packed by kpack. On a GPU the same tests compile and run the PTX, and
tests/test_gpu.py runs it at the 67B shapes.
"""

import re

import numpy as np
import pytest
import torch

from tameshi.loading.awq import dequantize_gemm, pack_gemm

triton = pytest.importorskip("triton")
from tameshi.kernels.awq_mma import BLOCK, COLUMNS, mma_configs, program_ptx  # noqa: E402
from tameshi.kernels.awq_triton import (  # noqa: E402
    MatmulConfig,
    _scratch,
    awq_matmul,
    default_config,
    kdequantize_reference,
    kernel_constants,
    kpack,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MMA = dict(fixup=True, mma=True)


def packed_and_reference(k: int, n: int, group: int, seed: int, paired: bool = True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // group, n), generator=gen)
    s = (torch.rand(k // group, n, generator=gen) * 0.02 + 0.001).half()
    qweight, qzeros = pack_gemm(q), pack_gemm(z)
    packed = kpack(qweight.to(DEVICE), qzeros.to(DEVICE), s.to(DEVICE), group, paired)
    return packed, dequantize_gemm(qweight, qzeros, s, group)


@pytest.mark.parametrize(
    ("m", "k", "n", "group", "config"),
    [
        (1, 512, 128, 128, MatmulConfig(1, 128, 32, 2, 2, **MMA, depth=2)),  # two groups a program
        (1, 512, 200, 128, MatmulConfig(1, 128, 32, 4, 2, **MMA)),  # N not a multiple of the tile
        (2, 256, 256, 64, MatmulConfig(1, 256, 32, 4, 4, **MMA, depth=4)),  # two rows; depth past blocks
        (1, 512, 128, 128, MatmulConfig(1, 128, 32, 8, 2, **MMA)),  # half a group a program
        (1, 256, 64, 32, MatmulConfig(1, 64, 32, 1, 1, **MMA, depth=2)),  # eight groups, unsplit
        (8, 512, 256, 128, MatmulConfig(8, 128, 32, 4, 2, **MMA, depth=2)),  # 8 rows in one program
        (5, 256, 136, 64, MatmulConfig(8, 128, 32, 2, 2, **MMA)),  # 5 of 8 rows; N past the tile
        (11, 256, 128, 128, MatmulConfig(8, 64, 32, 2, 1, **MMA)),  # two row blocks, 3 of the second's
    ],
)
def test_tensor_core_one_row_kernel_equals_reference(m, k, n, group, config):
    packed, w = packed_and_reference(k, n, group, seed=m + k + n)
    kernel, consts = kernel_constants(config, k, group, torch.float16, paired=True, n=n)
    assert kernel.fn.__name__ == "_awq_gemv_mma_kernel"
    assert consts["BLOCKS"] * consts["SPLIT_K"] * BLOCK == k
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).half().to(DEVICE)
    y = awq_matmul(x, packed, config)
    ref = x.cpu().float() @ w
    torch.testing.assert_close(y.cpu().float(), ref, rtol=2**-9, atol=2**-9 * ref.abs().max().item())
    ws, counts = _scratch[x.device]
    assert not ws.any() and not counts.any()
    y32 = awq_matmul(x, packed, config, out_dtype=torch.float32)
    torch.testing.assert_close(y32.cpu(), ref, rtol=2**-9, atol=2**-9 * ref.abs().max().item())


@pytest.mark.parametrize("case", ["bf16", "nibbles", "unaligned", "offset"])
def test_tensor_core_one_row_kernel_falls_back_where_it_cannot_read(case):
    """bf16 x, natural nibble order, x off 16 bytes, and weights 4 bytes past 16 go to the default
    one-row kernel, and still equal the reference."""
    k, n, group = 256, 256, 128
    packed, w = packed_and_reference(k, n, group, seed=4, paired=case != "nibbles")
    if case == "offset":
        words = torch.empty(packed.qweight.numel() + 1, dtype=torch.int32, device=DEVICE)[1:]
        words.copy_(packed.qweight.flatten())
        packed = type(packed)(words.view(k // 8, n), packed.zeros, packed.scales, group, True)
        assert packed.qweight.is_contiguous() and packed.qweight.data_ptr() % 16 == 4
    dtype = torch.bfloat16 if case == "bf16" else torch.float16
    buffer = torch.randn(1, k + 1, generator=torch.Generator().manual_seed(4)).to(dtype).to(DEVICE)
    x = buffer[:, 1:] if case == "unaligned" else buffer[:, :k].contiguous()
    y = awq_matmul(x, packed, MatmulConfig(1, 128, 32, 4, 2, **MMA))
    ref = x.cpu().float() @ w
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(y.cpu().float(), ref, rtol=eps, atol=eps * ref.abs().max().item())


def test_tensor_core_tile_shape_is_checked():
    packed, _ = packed_and_reference(256, 256, 128, seed=0)
    x = torch.zeros(1, 256, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="64 columns a warp"):
        awq_matmul(x, packed, MatmulConfig(1, 256, 32, 1, 2, **MMA))
    packed, _ = packed_and_reference(384, 256, 128, seed=0)  # 3 blocks a program against 4 a group
    x = torch.zeros(1, 384, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="whole groups or part of one"):
        awq_matmul(x, packed, MatmulConfig(1, 128, 32, 4, 2, **MMA))


def test_two_to_eight_rows_default_to_the_tensor_core_kernel():
    """2-8 rows of fp16 x on paired words take the 8-row tile (128 columns, 16 blocks of 32 a program
    where K allows); one row keeps the streamed tile, 9 rows and more (and x the kernel cannot read)
    the 16-row tensor-core tile."""
    four = default_config(4, 10240, 8192, 128, stream=True)
    assert four.mma and four.block_m == 8 and four.split_k == 16 and four.block_n == 128 and four.depth == 2
    assert default_config(2, 4096, 11008, 128, stream=True).split_k == 43  # 344 blocks: 8 a program
    assert default_config(2, 4096, 4096, 32, stream=True).split_k == 8
    assert default_config(1, 8192, 8192, 128, stream=True).stream
    assert not default_config(9, 8192, 8192, 128, stream=True).mma
    assert not default_config(4, 8192, 8192, 128).mma
    packed, w = packed_and_reference(512, 256, 128, seed=3)
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(3)).half().to(DEVICE)
    ref = x.cpu().float() @ w
    y = awq_matmul(x, packed)  # awq_matmul's own pick: the 8-row tile
    torch.testing.assert_close(y.cpu().float(), ref, rtol=2**-9, atol=2**-9 * ref.abs().max().item())


def test_mma_configs_divide_k():
    for k, group in [(8192, 128), (22016, 128), (4096, 64), (11008, 128), (576, 64), (256, 32)]:
        configs = mma_configs(k, group)
        assert configs
        for c in configs:
            blocks = k // BLOCK // c.split_k
            assert k % (BLOCK * c.split_k) == 0 and c.block_n == 64 * c.num_warps and c.depth <= blocks
            assert blocks % (group // BLOCK) == 0 or (group // BLOCK) % blocks == 0


# --- the PTX, run: one warp, in lockstep -------------------------------------------------------


class Warp:
    """32 lanes' registers (uint32 or uint64 bits, one numpy array each) and a flat memory."""

    def __init__(self, memory: np.ndarray, operands: dict[str, np.ndarray]):
        self.memory = memory
        self.regs = dict(operands)

    def get(self, name: str) -> np.ndarray:
        name = name.strip()
        if name.startswith("0f"):  # f32 immediate, as its bits
            return np.full(32, int(name[2:], 16), dtype=np.uint32)
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", name):
            return np.full(32, int(name, 0), dtype=np.uint64)
        return self.regs[name]

    def f32(self, name: str) -> np.ndarray:
        return self.get(name).astype(np.uint32).view(np.float32)

    def set_f32(self, name: str, value: np.ndarray) -> None:
        self.regs[name] = value.astype(np.float32).view(np.uint32)

    def halves(self, name: str) -> np.ndarray:
        """[32, 2] float64: the two fp16 of a b32 register (low half first)."""
        return (
            self.get(name)
            .astype(np.uint32)
            .view(np.uint16)
            .view(np.float16)
            .reshape(32, 2)
            .astype(np.float64)
        )

    def load(self, dst: list[str], address: str) -> None:
        base, _, offset = address.strip("[]").partition("+")
        at = self.get(base).astype(np.int64) + int(offset or 0)
        for i, name in enumerate(dst):
            self.regs[name] = np.array(
                [self.memory[a + 4 * i : a + 4 * i + 4].view(np.uint32)[0] for a in at]
            )

    def mma(self, d: list[str], a: list[str], b: list[str], c: list[str]) -> None:
        """m16n8k16, f16 in, f32 accumulate: the fragments of the PTX ISA (g = lane / 4, t = lane % 4)."""
        A, B = np.zeros((16, 16)), np.zeros((16, 8))
        a_h, b_h = [self.halves(r) for r in a], [self.halves(r) for r in b]
        for lane in range(32):
            g, t = divmod(lane, 4)
            for i in range(2):
                A[g, 2 * t + i], A[g + 8, 2 * t + i] = a_h[0][lane, i], a_h[1][lane, i]
                A[g, 2 * t + 8 + i], A[g + 8, 2 * t + 8 + i] = a_h[2][lane, i], a_h[3][lane, i]
                B[2 * t + i, g], B[2 * t + 8 + i, g] = b_h[0][lane, i], b_h[1][lane, i]
        C = [self.f32(r).astype(np.float64) for r in c]
        D = A @ B
        lanes = np.arange(32)
        g, t = lanes // 4, lanes % 4
        out = [D[g, 2 * t] + C[0], D[g, 2 * t + 1] + C[1], D[g + 8, 2 * t] + C[2], D[g + 8, 2 * t + 1] + C[3]]
        for name, value in zip(d, out, strict=True):
            self.set_f32(name, value)

    def run(self, ptx: str) -> None:
        for line in ptx.splitlines():
            line = line.strip().rstrip(";")
            if not line or line[0] in "{}." or line == "griddepcontrol.wait":
                continue
            op, _, rest = line.partition(" ")
            args = [s.strip() for s in re.split(r",(?![^{]*})", rest)]
            regs = lambda s: [r.strip() for r in s.strip("{}").split(",")]  # noqa: E731
            if op.startswith("ld.global"):
                self.load(regs(args[0]), args[1])
            elif op.startswith("mma.sync"):
                self.mma(*(regs(s) for s in args))
            elif op in ("mov.b32", "mov.u64", "mov.f32") and not args[0].startswith("{"):
                self.regs[args[0]] = self.get(args[1]).astype(np.uint64 if op == "mov.u64" else np.uint32)
            elif op == "mov.b32":  # {lo, hi} of a b32
                lo, hi = regs(args[0])
                bits = self.get(args[1]).astype(np.uint32)
                self.regs[lo], self.regs[hi] = bits & 0xFFFF, bits >> 16
            elif op == "add.s64":
                self.regs[args[0]] = self.get(args[1]).astype(np.uint64) + self.get(args[2]).astype(np.uint64)
            elif op == "mul.hi.u32":
                wide = self.get(args[1]).astype(np.uint64) * self.get(args[2]).astype(np.uint64)
                self.regs[args[0]] = (wide >> 32).astype(np.uint32)
            elif op == "lop3.b32":
                assert args[4] == "0xea"  # (a & b) | c
                a, b, c = (self.get(s).astype(np.uint32) for s in args[1:4])
                self.regs[args[0]] = (a & b) | c
            elif op == "cvt.f32.f16":
                half = self.get(args[1]).astype(np.uint16).view(np.float16)
                self.set_f32(args[0], half.astype(np.float32))
            elif op in ("add.f32", "sub.f32", "mul.f32"):
                x, y = self.f32(args[1]), self.f32(args[2])
                self.set_f32(args[0], x + y if op == "add.f32" else x - y if op == "sub.f32" else x * y)
            elif op == "neg.f32":
                self.set_f32(args[0], -self.f32(args[1]))
            elif op == "fma.rn.f32":
                x, y, z = (self.f32(s).astype(np.float64) for s in args[1:4])
                self.set_f32(args[0], x * y + z)
            else:
                raise AssertionError(f"the test's interpreter does not know {op!r}")


@pytest.mark.parametrize(
    ("k", "group", "blocks", "depth", "m"),
    [(256, 128, 8, 2, 1), (256, 128, 8, 1, 1), (128, 64, 4, 4, 1), (128, 128, 2, 1, 1), (256, 32, 8, 3, 1),
     (256, 128, 8, 2, 8), (128, 64, 4, 1, 5)],
)  # fmt: skip
def test_program_ptx_run_by_the_isa_equals_reference(k, group, blocks, depth, m):
    """One warp (64 columns) of program_ptx over K = blocks·32 from 0, run instruction by instruction:
    its sums a lane equal x · W. One row: columns 8g..8g + 7, the same in all four lanes of a quad;
    m rows (lane g loading row min(g, m - 1)): rows 2t and 2t + 1 of those columns."""
    n = 64
    packed, w = packed_and_reference(k, n, group, seed=k + group + blocks, paired=True)
    packed = type(packed)(*(t.cpu() for t in (packed.qweight, packed.zeros, packed.scales)), group, True)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(blocks)).half()
    kk = blocks * BLOCK  # the program's K
    pieces = [packed.qweight, x, packed.zeros, packed.scales]
    memory, bases, at = np.zeros(1 << 20, dtype=np.uint8), [], 0
    for p in pieces:
        raw = p.contiguous().view(torch.uint8).numpy().reshape(-1)
        memory[at : at + raw.size] = raw
        bases.append(at)
        at += (raw.size + 255) // 256 * 256
    lanes = np.arange(32)
    g, t = lanes // 4, lanes % 4
    col = 8 * g
    rows = 1 if m == 1 else 2
    outs = COLUMNS * rows
    x_row = np.minimum(g, m - 1) if m > 1 else np.zeros(32, dtype=np.int64)
    addresses = [
        bases[0] + ((t * n) + col) * 4, bases[1] + (x_row * k + 8 * t) * 2, bases[2] + col * 2, bases[3] + col * 2,
        np.full(32, 16 * n), np.full(32, 2 * n),
    ]  # fmt: skip
    operands = {f"${outs + i}": a.astype(np.uint64) for i, a in enumerate(addresses)}
    warp = Warp(memory, operands)
    warp.run(program_ptx(blocks, group // BLOCK, depth, pdl=True, rows=rows))
    ref = (x[:, :kk].float() @ kdequantize_reference(packed)[:kk]).numpy()  # [m, n]
    cols = col[:, None] + np.arange(COLUMNS)[None, :]
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    for r in range(rows):
        sums = np.stack([warp.f32(f"${COLUMNS * r + j}") for j in range(COLUMNS)], axis=1)  # [lane, column]
        row = np.minimum(2 * t + r, m - 1) if m > 1 else np.zeros(32, dtype=np.int64)
        np.testing.assert_allclose(sums, ref[row[:, None], cols], **tol)
    assert torch.equal(kdequantize_reference(packed), w)
