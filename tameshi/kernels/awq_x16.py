"""The one-row AWQ kernel on integer products: x in 16-bit fixed point, codes times x by dp2a.

Why. The streamed kernel (awq_gemv) turns codes into fp16 and multiplies in packed fp16: 13 PTX
instructions a word (4 lop3, a shift, 4 sub, 4 fma), about 17 in sm_90 SASS with its share of x
loads and sums, and at the 67B qkv and o shapes its arithmetic and its loads add up (64-66% of the
copy bandwidth, against 91-96% for its loads alone: benchmarks/results/awq-load-ceiling-h200.md).
Here the products are integers: two masks split a word's 8 nibbles into two registers of 4 bytes,
and four dp2a (each two 16-bit x times two bytes, added to an int32) take them: 7 instructions a
word, the zero point and scale applied once a unit.

x is prepared first (`quantize_x`, one small kernel): each block of `XB` values of a row becomes
int16 with one fp32 scale (the block's largest |x| / 32767), stored in the order the dp2a read a
word's nibbles, with the block's sum of int16 values. The products and their sums are exact
integers; the only rounding is of x to 16 bits (at most 2^-16 of the block's largest |x| a value,
below fp16's own rounding for every value within 2^5 of that largest), then one fp32 multiply-add a
unit. So it is at least as exact as the fp16 kernels, whose products round in fp16.

Layout. Paired words (KPacked.paired) hold code j in nibble j // 2 + 4 (j % 2). `w & 0x0f0f0f0f`
has nibbles 0, 2, 4, 6 as bytes (codes 0, 4, 1, 5), `(w >> 4) & 0x0f0f0f0f` nibbles 1, 3, 5, 7
(codes 2, 6, 3, 7); dp2a.lo multiplies bytes 0-1, dp2a.hi bytes 2-3, by the two int16 of its x
register. So a row's 8 x values are stored as x0 x4 x1 x5 x2 x6 x3 x7 (SLOT below), 16 bytes.

Where it runs (awq_triton.awq_matmul): one row of bf16 x, or of fp16 x the streamed kernel cannot
read (off 16 bytes), after quantize_x; and one row of fp16 x that arrives quantized (`x_q`) from the
kernel that wrote it: the RMSNorm before qkv (fused.add_rms_norm_x16) and the attention merge before
o (paged_attention.paged_decode_attention_x16, one block a head), which then need no quantize_x.
On an H200 at the 67B shapes (benchmarks/results/awq-x16-h200.md) its best tiles alone take qkv /
o / gate_up / down in 13.5 / 11.2 / 47.9 / 26.3 µs (78 / 75 / 94 / 86% of the copy bandwidth)
against the streamed kernel's 15.8 / 13.4 / 56.3 / 30.4. Inside a decode step what counts is how
much each kernel lengthens it (benchmarks/profile_decode.py): there quantize_x as a kernel of its
own costs ~1.4 µs, and the dp2a kernel saves nothing at gate_up (49-50 µs either way) and 0.7 µs at
down, so fp16 x stays on the streamed kernel for those; at qkv and o, with x quantized by its
producer, the step's matmuls take 10.8 and 9.9 µs against 14.5 and 12.4, and DeepSeek-LLM-67B
decodes 85.7 tokens/s against 83.4
(benchmarks/results/awq-x16-fused-h200.md). For bf16 x the alternative is the older one-row kernel
(awq_triton._awq_gemv_kernel): DeepSeek-LLM-7B in bf16 decodes 524 tokens/s on this one against 386.
Tried and dropped: K split over a program's warps (summed in shared memory; o 12.9 against 11.1
µs), each program quantizing its own blocks of x (o 14.8-16.0, gate_up 151), an L2 prefetch of a
program's later units and column slabs with no split-K sum (awq-prefetch-slab-h200.md), and the
norm quantizing a whole row in one program (its scattered int16 stores took ~10 µs: the step went
from 11.6 to 12.0 ms; fused.add_rms_norm_x16 splits the row over programs). Also (awq-tries-h200-2026-12-04.md):
the weights streamed by TMA into a shared-memory ring (a Gluon kernel; o 14.3 µs), the split-K sum
in 64-bit fixed point (the same y in any order, but o 13.1 µs), and column slabs on words laid out
slab by slab (within 1%).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tameshi.kernels import interpreted, pdl
from tameshi.kernels.awq_gemv import COLUMNS, stream_units
from tameshi.kernels.awq_triton import KPacked, MatmulConfig, _store_output

SCALE = tl.constexpr(32767.0)  # the int16 a block's largest |x| becomes

_WORD_PTX = """
            shr.u32 t, ${w}, 4;
            and.b32 lo, ${w}, 0x0f0f0f0f;
            and.b32 hi, t, 0x0f0f0f0f;
            dp2a.lo.s32.u32 acc, x{x0}, lo, acc;
            dp2a.hi.s32.u32 acc, x{x1}, lo, acc;
            dp2a.lo.s32.u32 acc, x{x2}, hi, acc;
            dp2a.hi.s32.u32 acc, x{x3}, hi, acc;"""


def row_pair_ptx(columns: int = COLUMNS) -> str:
    """PTX for one row pair of `columns` columns: each column's 16 products summed in int32.

    Operands: $0.. the sums (s32); the even row's words, the odd row's words (b32 each); the address of
    the pair's 16 int16 x (u64, the same for every column). The x loads are weak (not .nc), as in
    awq_gemv.row_pair_ptx: they must stay below griddepcontrol.wait."""
    words_a, words_b, x_at = columns, 2 * columns, 3 * columns
    body = [
        "{",
        ".reg .b32 t, lo, hi, acc, x0, x1, x2, x3, x4, x5, x6, x7;",
        f"ld.global.v4.b32 {{x0, x1, x2, x3}}, [${x_at}];",
        f"ld.global.v4.b32 {{x4, x5, x6, x7}}, [${x_at}+16];",
    ]
    for col in range(columns):
        body.append("mov.b32 acc, 0;")
        body.append(_WORD_PTX.format(w=words_a + col, x0=0, x1=1, x2=2, x3=3))
        body.append(_WORD_PTX.format(w=words_b + col, x0=4, x1=5, x2=6, x3=7))
        body.append(f"mov.b32 ${col}, acc;")
    body.append("}")
    return "\n".join(body)


_ROW_PAIR_PTX = tl.constexpr(row_pair_ptx())
_PACK = tl.constexpr(COLUMNS)
_CONSTRAINTS = tl.constexpr(",".join(["=r"] * COLUMNS + ["r"] * (2 * COLUMNS) + ["l"] * COLUMNS))


@triton.jit
def _slot(j):
    """Where x value j of a row (0..7) is stored: x0 x4 x1 x5 x2 x6 x3 x7."""
    return tl.where(j < 4, 2 * j, 2 * j - 7)


@triton.jit
def _quantize_tile(x, blocks, keep, q_row, scale_row, sum_row, XB: tl.constexpr):
    """x [B, XB] (fp32), blocks `blocks` [B] of one row of x, stored where `keep` [B]: each value to
    int16 (in SLOT order), each block's scale and its int16 sum."""
    at = blocks[:, None] * XB + tl.arange(0, XB)[None, :]
    top = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-30)  # a block of zeros: any scale, all zeros
    # max drops NaN (on the GPU and under the interpreter): a block that holds one gets a NaN scale,
    # so that y is NaN wherever the fp32 product is, not finite and wrong
    top = tl.where(tl.max((x != x).to(tl.int32), axis=1) > 0, float("nan"), top)
    inv = SCALE / top
    q = x * inv[:, None]
    q = tl.where(q >= 0, q + 0.5, q - 0.5).to(tl.int32)  # round half away from zero; |q| <= 32767
    tl.store(q_row + (at // 8) * 8 + _slot(at % 8), q.to(tl.int16), mask=keep[:, None])
    tl.store(scale_row + blocks, top / SCALE, mask=keep)
    tl.store(sum_row + blocks, tl.sum(q, axis=1), mask=keep)


@triton.jit
def _quantize_x_kernel(
    x_ptr, q_ptr, scale_ptr, sum_ptr, stride_xm, K, XB: tl.constexpr, BLOCKS: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    """Program (block run, row): BLOCKS blocks of XB values of x (_quantize_tile)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(1)
    nb = K // XB
    blocks = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    x = tl.load(x_ptr + row * stride_xm + blocks[:, None] * XB + tl.arange(0, XB)[None, :]).to(tl.float32)
    q_row = q_ptr + row.to(tl.int64) * K
    _quantize_tile(x, blocks, blocks < nb, q_row, scale_ptr + row * nb, sum_ptr + row * nb, XB)


@triton.jit
def _unit_dots(words_a, words_b, q_row, unit, RU: tl.constexpr, ASM: tl.constexpr):
    """The unit's integer products [RU/2, BLOCK_N], each row pair's 16 summed (int32)."""
    x_at = q_row + unit.to(tl.int64) * (8 * RU) + 16 * tl.arange(0, RU // 2).to(tl.int64)  # row pairs
    if ASM:
        dots = tl.inline_asm_elementwise(
            _ROW_PAIR_PTX, _CONSTRAINTS,
            [words_a, words_b, tl.broadcast_to(x_at[:, None], words_a.shape)],
            dtype=tl.int32, is_pure=False, pack=_PACK,
        )  # fmt: skip
    else:  # the same sums in int32 tensors: nibble n pairs with slot n // 2 + 4 (n % 2)
        dots = tl.zeros(words_a.shape, dtype=tl.int32)
        for n in tl.static_range(8):
            slot: tl.constexpr = n // 2 + 4 * (n % 2)
            xa = tl.load(x_at + slot).to(tl.int32)[:, None]
            xb = tl.load(x_at + 8 + slot).to(tl.int32)[:, None]
            dots += ((words_a >> (4 * n)) & 0xF) * xa + ((words_b >> (4 * n)) & 0xF) * xb
    return dots


@triton.jit
def _unit_sums(
    acc, words_a, words_b, z, s, q_row, xs_row, xsum_row, unit, RU: tl.constexpr, ASM: tl.constexpr
):
    """acc [BLOCK_N] + the unit's products: (Σ c q - z Σ q) · scale · x's block scale. A column's
    sums are exact integers until the one conversion to fp32 (|Σ c q| < 15 · 32767 · 8 RU)."""
    dots = tl.sum(_unit_dots(words_a, words_b, q_row, unit, RU, ASM), axis=0)
    exact = dots - z.to(tl.int32) * tl.load(xsum_row + unit)
    return acc + exact.to(tl.float32) * (s.to(tl.float32) * tl.load(xs_row + unit))


@triton.jit
def _awq_gemv_x16_kernel(
    q_ptr, xs_ptr, xsum_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, N, K, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, RU: tl.constexpr, UNITS: tl.constexpr,
    SPLIT_K: tl.constexpr, DEPTH: tl.constexpr, FIXUP: tl.constexpr, EVEN: tl.constexpr,
    ASM: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    """Program (column block, row, K split) sums UNITS units of RU word rows (one of x's int16 blocks
    each), loading DEPTH (1 or 2) units ahead of the one it computes: the streamed kernel's grid,
    loads and split-K sum (awq_gemv._awq_gemv_stream_kernel), on int16 x. (Each program quantizing
    its own blocks of x into shared buffers instead was slower on an H200: o 16.0 µs against 12.3
    with quantize_x before it, gate_up 151 against 49.)"""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    q_row = q_ptr + row.to(tl.int64) * K
    xs_row = xs_ptr + row * (K // (8 * RU))
    xsum_row = xsum_ptr + row * (K // (8 * RU))
    acc = stream_units(
        w_ptr, z_ptr, s_ptr, pid_k * UNITS, offs_n, mask_n, N, q_row, xs_row, xsum_row, RU, GROUP, UNITS,
        DEPTH, EVEN, PDL, _unit_sums, ASM,
    )  # fmt: skip
    count = count_ptr + row * tl.num_programs(0) + pid_n
    _store_output(
        acc, y_ptr + row * stride_ym + offs_n, ws_ptr + row * N + offs_n, count, mask_n, SPLIT_K, FIXUP
    )


class QuantizedX(NamedTuple):
    """x [M, K] as the dp2a kernel reads it: int16 values [M, K] in SLOT order, each block's fp32 scale
    and int32 sum [M, K / block] (quantize_x; or the kernel that wrote x, where it writes this too:
    fused.add_rms_norm_x16, paged_attention.paged_decode_attention_x16)."""

    q: torch.Tensor
    scales: torch.Tensor
    sums: torch.Tensor

    @staticmethod
    def empty(m: int, k: int, block: int, device: torch.device) -> QuantizedX:
        if k % block:
            raise ValueError(f"x's block of {block} must divide K {k}")
        return QuantizedX(
            torch.empty(m, k, dtype=torch.int16, device=device),
            torch.empty(m, k // block, dtype=torch.float32, device=device),
            torch.empty(m, k // block, dtype=torch.int32, device=device),
        )


def quantize_x(x: torch.Tensor, xb: int) -> QuantizedX:
    """x [M, K] (fp16/bf16) -> int16 values [M, K] in SLOT order, fp32 scales and int32 sums [M, K/xb]."""
    m, k = x.shape
    q, scales, sums = out = QuantizedX.empty(m, k, xb, x.device)
    blocks = next(b for b in (8, 4, 2, 1) if (k // xb) % b == 0)
    with_pdl = pdl(x.device)
    extra = {"PDL": True, "launch_pdl": True} if with_pdl else {}
    _quantize_x_kernel[(k // xb // blocks, m)](
        x, q, scales, sums, x.stride(0), k, XB=xb, BLOCKS=blocks, num_warps=4, **extra
    )
    return out


UNIT_BLOCKS = (128, 64, 32)  # a unit of K (one x block): the largest that divides the group


def x16_unit(group: int) -> int:
    """The unit of K (and of x's blocks) of the dp2a tiles for this group size (x16_config)."""
    return next(b for b in UNIT_BLOCKS if group % b == 0)


def x16_fits(n: int, group: int, paired: bool) -> bool:
    """Can the dp2a kernel run this weight? Paired words, a group that one of UNIT_BLOCKS divides."""
    return paired and any(group % b == 0 for b in UNIT_BLOCKS)


def x16_config(n: int, k: int, group: int) -> MatmulConfig:
    """The dp2a kernel's tile (MatmulConfig.x16): 256 columns (two warps), units of 128 of K (or the
    group, where smaller) loaded one ahead, the most of 8, 4, 2, 1 units a program that leaves 600
    programs or more (and divides K's units), split K the rest. On an H200 at the 67B shapes, within
    2% of the best of x16_configs' 36 tiles at each shape (30 at down), quantize_x excluded
    (benchmarks/results/awq-x16-h200.md): qkv 13.6 µs (best 13.5), o 11.3 (11.2), gate_up 48.2
    (47.9), down 26.6 (26.3)."""
    block_k = x16_unit(group)
    units = k // block_k
    tiles = -(-n // 256)
    per = next((p for p in (8, 4, 2) if units % p == 0 and tiles * units // p >= 600), 1)
    return MatmulConfig(1, 256, block_k, units // per, num_warps=2, num_stages=1, fixup=True, x16=True)


def x16_configs(k: int, group: int) -> list[MatmulConfig]:
    """The dp2a tiles worth timing at K = k (benchmarks/awq_x16.py sweeps them): 128, 256 or 512
    columns, units of 64 or 128 (inside the group), 1-8 units a program, one or (from two units a
    program on) two loaded ahead."""
    out = []
    for block_n in (128, 256, 512):
        for block_k in (128, 64):
            if group % block_k or k % block_k:
                continue
            units = k // block_k
            for per in (1, 2, 4, 8):
                for depth in (1, 2) if per >= 2 else (1,):
                    if units % per == 0:
                        out.append(MatmulConfig(
                            1, block_n, block_k, units // per, block_n // 128, 1, fixup=True, x16=True,
                            depth=depth,
                        ))  # fmt: skip
    return out


def x16_constants(cfg: MatmulConfig, k: int, group: int, with_pdl: bool, n: int | None = None) -> dict:
    """The dp2a kernel's compile-time constants for `cfg` (also for compiling it ahead, in tests)."""
    units = k // cfg.block_k // cfg.split_k
    if (
        cfg.block_m != 1
        or cfg.num_warps * 128 != cfg.block_n
        or group % cfg.block_k
        or cfg.block_k not in UNIT_BLOCKS
        or cfg.depth not in (1, 2)
        or units < cfg.depth
    ):
        raise ValueError(
            f"a dp2a tile needs one row, 128 columns a warp, units of 32-128 of K inside a group, depth 1 or 2 (and as many units a program): {cfg}"
        )
    return dict(
        GROUP=group, BLOCK_N=cfg.block_n, RU=cfg.block_k // 8, UNITS=units, SPLIT_K=cfg.split_k, DEPTH=cfg.depth,
        FIXUP=cfg.split_k > 1 and cfg.fixup, EVEN=n is not None and n % cfg.block_n == 0,
        ASM=not interpreted(), PDL=with_pdl,
    )  # fmt: skip


def launch_x16(
    x: torch.Tensor,
    packed: KPacked,
    cfg: MatmulConfig,
    y: torch.Tensor,
    ws: torch.Tensor,
    counts: torch.Tensor,
    prepared: QuantizedX | None = None,
) -> None:
    """awq_triton.launch for a dp2a tile: quantize_x (or `prepared`, its output for blocks of
    cfg.block_k), then the kernel, on y, ws and counts as launch describes them."""
    m, k = x.shape
    n = packed.shape[1]
    if not packed.paired:
        raise ValueError("the dp2a kernel reads paired words (KPacked.paired)")
    with_pdl = pdl(x.device)
    consts = x16_constants(cfg, k, packed.group, with_pdl, n)
    q, scales, sums = prepared if prepared is not None else quantize_x(x, cfg.block_k)
    if q.shape != (m, k) or scales.shape != (m, k // cfg.block_k) or sums.shape != scales.shape:
        raise ValueError(
            f"x quantized as {list(q.shape)} in {scales.shape[-1]} blocks a row; the tile needs {m}x{k} in blocks of {cfg.block_k}"
        )
    extra = {"launch_pdl": True} if with_pdl else {}
    grid = (triton.cdiv(n, cfg.block_n), m, cfg.split_k)
    _awq_gemv_x16_kernel[grid](
        q, scales, sums, packed.qweight, packed.zeros, packed.scales, y, ws, counts, n, k, y.stride(0),
        **consts, num_warps=cfg.num_warps, num_stages=1, **extra,
    )  # fmt: skip
