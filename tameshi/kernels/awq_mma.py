"""The tensor-core one-row AWQ kernel (MatmulConfig.mma): decode's y = x W for 1-8 rows of fp16 x
on paired words.

What it is for. The CUDA-core one-row kernels spend 17-18 sm_90 instructions a packed word (8
products): the codes to fp16 (4 lop3, 1 shift), the zero off (4 sub.f16x2), the products (4
fma.f16x2) and their sum to fp32. Here one mma.sync.m16n8k16 does a word's 8 products a thread and
the zero comes off once a group: 4 lop3, 1 shift and one tensor-core instruction a word (10 in all
with loads and the group's sums, SASS). The mma's N is 8 columns of x, so up to 8 rows cost what
one does: at 2-8 rows (a few sequences decoding together) this kernel's 8-row tile is 1.3-1.8x
faster than the 16-row tensor-core tile awq_matmul ran before (benchmarks/results/
awq-mma-rows-h200.md; rows_config). At one row it is no faster than the streamed CUDA-core kernel
(within +-5% at the 67B shapes, awq-one-row-mma-h200.md): halving the instructions did not move a
one-row call, which waits on its loads and its split-K sum, not on arithmetic (awq-split-sum-h200.md).

How a warp maps onto the mma (PTX ISA, m16n8k16, f16 in, f32 accumulate): the mma's M rows are 16
weight columns, its K the codes, its N rows of x: one row in all 8 columns (every lane ends with its
sums), or row g of up to 8 in column g (lane t ends with rows 2t and 2t + 1). Lane (g, t) = (lane / 4, lane % 4) holds, for each word row r it reads, the words of
8 adjacent columns; columns 2i and 2i + 1 are rows g and g + 8 of tile i (4 tiles). A block of 32
of K is 4 word rows, row r + t in lane t. The mma's K order is free if x follows it, so lane t's
k slots 2t, 2t + 1 and 2t + 8, 2t + 9 take codes 0-1 and 2-3 of its word (step A) and then 4-5 and
6-7 (step B, after the shift): on paired words (codes 2i, 2i + 1 in nibbles i, i + 4) each is one
lop3, and the x it pairs with is 16 bytes at 8r of x, one load for both steps.

The codes go in biased: lop3 with 0x6400 gives fp16 1024 + c (nibbles 0, 4, and 2, 6 after the
shift), with 0x5400 gives 64 + c (nibbles 1, 5 and 3, 7). Over a group, a column sums

    Σ (bias_k + c_k) x_k  =  Σ c_k x_k  +  1024 S_A + 64 S_B,

S_A and S_B the sums of x over the two classes of K, which one more mma a block computes (a
constant A of ones and zeros, shared by the four tiles). So (products exact in fp32, sums in fp32)

    y  +=  s · (acc - 1024 S_A - 64 S_B - z (S_A + S_B))            per group and column,

as the tensor-core GEMM does with its magic codes (awq_triton._partial_product). Needs fp16 x 16-byte
aligned with rows a multiple of 8 apart, paired words, N a multiple of 8 and K of 32, and 16-byte
aligned weights (mma_fits); awq_matmul picks another tile otherwise. Under TRITON_INTERPRET (no PTX)
a plain per-lane sum stands in, with the same grid, lanes and stores. The reference, as for every
AWQ kernel, is tameshi.loading.awq.dequantize_gemm (tests/test_awq_mma.py runs program_ptx in an
ISA interpreter on CPU; tests/test_gpu.py runs it on the GPU at the 67B shapes).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from tameshi.kernels.awq_triton import KPacked, MatmulConfig, _store_output, stream_fits

COLUMNS = 8  # columns a lane reads (two 16-byte loads a word row): 4 tiles of the mma's 16 rows
BLOCK = 32  # K a block: 4 word rows, one a lane of a quad
_LOW = "lop3.b32 {d}, {w}, 0x000f000f, 0x64006400, 0xea;"  # (w & m) | 1024: fp16 1024 + c, two at once
_HIGH = "lop3.b32 {d}, {w}, 0x00f000f0, 0x54005400, 0xea;"  # nibbles 1 and 5: fp16 64 + c
_CONSTRAINTS_1 = tl.constexpr(",".join(["=f"] * COLUMNS + ["l"] * 6))
_CONSTRAINTS_2 = tl.constexpr(",".join(["=f"] * 2 * COLUMNS + ["l"] * 6))
_MMA = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{d}}}, {{{a}}}, {{{b}}}, {{{c}}};"


@functools.cache  # one string object a tile: Triton keys its launches on it, and hashes a str once
def program_ptx(blocks: int, group_blocks: int, depth: int, pdl: bool, rows: int = 1) -> str:
    """PTX for one program: `blocks` blocks of 32 of K, a group every `group_blocks` (or one
    unfinished group, where the program's K ends inside it), loads issued `depth` blocks ahead.
    `rows` 1: one row of x (in every lane), each lane's 8 column sums; 2: up to 8 rows (lane g
    loads row g, the mma's column g), each lane's sums for rows 2t and 2t + 1 (its c0, c1 and c2, c3).

    Operands: $0.. the lane's 8·rows sums (f32, out: row 2t's 8 columns, then row 2t + 1's); then its
    weights' address (block 0), x's, the zeros' and scales' (the program's first group), a block's
    step in the weights (16 N bytes), a group's in zeros and scales (2 N bytes). With `pdl`, the
    first blocks' weights, zeros and scales load before griddepcontrol.wait; x (a weak load, which
    ptxas keeps below the wait) after it."""
    outs = COLUMNS * rows
    w_at, x_at, z_at, s_at, w_step, g_step = (f"${outs + i}" for i in range(6))
    groups = max(1, blocks // group_blocks)
    per_group = min(blocks, group_blocks)
    lines = [
        "{",
        ".reg .b32 one, zero, lo<2>, hi<2>;",
        ".reg .f32 fz, b1, ss, nss, t, zf, sf, c<16>, sa<4>;",
        ".reg .f16 zlo, zhi, slo, shi;",
        ".reg .u64 pw, pz, ps;",
        "mov.b32 one, 0x3c003c00;",  # fp16 1.0, 1.0
        "mov.b32 zero, 0;",
        "mov.f32 fz, 0f00000000;",
        f"mov.u64 pw, {w_at};",
        f"mov.u64 pz, {z_at};",
        f"mov.u64 ps, {s_at};",
    ]
    lines += [f"mov.f32 ${j}, 0f00000000;" for j in range(outs)]
    lines += [f".reg .b32 w{b}_<8>, x{b}_<4>, v{b}_<8>;" for b in range(blocks)]
    lines += [f".reg .b32 z{i}_<4>, s{i}_<4>;" for i in range(groups)]

    def load_weights(b: int) -> list[str]:
        out = [
            f"ld.global.nc.L1::no_allocate.v4.b32 {{w{b}_0, w{b}_1, w{b}_2, w{b}_3}}, [pw];",
            f"ld.global.nc.L1::no_allocate.v4.b32 {{w{b}_4, w{b}_5, w{b}_6, w{b}_7}}, [pw+16];",
            f"add.s64 pw, pw, {w_step};",
        ]
        if b % group_blocks == 0:  # the group's zeros and scales
            i = b // group_blocks
            out += [
                f"ld.global.nc.v4.b32 {{z{i}_0, z{i}_1, z{i}_2, z{i}_3}}, [pz];",
                f"ld.global.nc.v4.b32 {{s{i}_0, s{i}_1, s{i}_2, s{i}_3}}, [ps];",
                f"add.s64 pz, pz, {g_step};",
                f"add.s64 ps, ps, {g_step};",
            ]
        return out

    def load_x(b: int) -> list[str]:
        return [f"ld.global.v4.b32 {{x{b}_0, x{b}_1, x{b}_2, x{b}_3}}, [{x_at}+{64 * b}];"]

    def compute(b: int) -> list[str]:
        first = b % per_group == 0  # a group's first block starts its sums from zero
        out = []
        for step, (xa, xb) in enumerate(((0, 1), (2, 3))):
            for i in range(4):  # tile i: columns 2i (mma row g) and 2i + 1 (row g + 8)
                wa, wb = f"w{b}_{2 * i}", f"w{b}_{2 * i + 1}"
                if step == 1:
                    out += [
                        f"mul.hi.u32 v{b}_{2 * i}, {wa}, 0x1000000;",
                        f"mul.hi.u32 v{b}_{2 * i + 1}, {wb}, 0x1000000;",
                    ]
                    wa, wb = f"v{b}_{2 * i}", f"v{b}_{2 * i + 1}"
                out += [
                    _LOW.format(d=f"lo{0}", w=wa), _LOW.format(d=f"lo{1}", w=wb),
                    _HIGH.format(d=f"hi{0}", w=wa), _HIGH.format(d=f"hi{1}", w=wb),
                ]  # fmt: skip
                acc = ", ".join(f"c{4 * i + q}" for q in range(4))
                init = "fz, fz, fz, fz" if first and step == 0 else acc
                out.append(_MMA.format(d=acc, a="lo0, lo1, hi0, hi1", b=f"x{b}_{xa}, x{b}_{xb}", c=init))
            sums = "sa0, sa1, sa2, sa3"
            init = "fz, fz, fz, fz" if first and step == 0 else sums
            # A of ones where the bias is 1024 (row g: slots 2t, 2t + 1), 64 (row g + 8: 2t + 8, 2t + 9)
            out.append(_MMA.format(d=sums, a="one, zero, zero, one", b=f"x{b}_{xa}, x{b}_{xb}", c=init))
        return out

    def epilogue(i: int) -> list[str]:
        out = []
        for r in range(rows):  # row 2t's sums in c0 (column 2p) and c2 (2p + 1); row 2t + 1's in c1, c3
            out += [
                f"mul.f32 b1, sa{r}, 0f44800000;",  # 1024 S_A
                f"fma.rn.f32 b1, sa{2 + r}, 0f42800000, b1;",  # + 64 S_B
                f"add.f32 ss, sa{r}, sa{2 + r};",
                "neg.f32 nss, ss;",
            ]
            for p in range(4):  # zeros and scales of columns 2p, 2p + 1
                out += [f"mov.b32 {{zlo, zhi}}, z{i}_{p};", f"mov.b32 {{slo, shi}}, s{i}_{p};"]
                for h, (zv, sv) in enumerate((("zlo", "slo"), ("zhi", "shi"))):
                    j = 2 * p + h
                    acc = f"c{4 * p + 2 * h + r}"
                    y = f"${COLUMNS * r + j}"
                    out += [
                        f"cvt.f32.f16 zf, {zv};", f"cvt.f32.f16 sf, {sv};",
                        f"sub.f32 t, {acc}, b1;", "fma.rn.f32 t, zf, nss, t;", f"fma.rn.f32 {y}, sf, t, {y};",
                    ]  # fmt: skip
        return out

    ahead = min(depth, blocks)
    for b in range(ahead):
        lines += load_weights(b)
    if pdl:
        lines.append("griddepcontrol.wait;")
    for b in range(ahead):
        lines += load_x(b)
    for b in range(blocks):
        if b + ahead < blocks:
            lines += load_weights(b + ahead) + load_x(b + ahead)
        lines += compute(b)
        if (b + 1) % per_group == 0:
            lines += epilogue(b // group_blocks)
    lines.append("}")
    return "\n".join(lines)


@triton.jit
def _awq_gemv_mma_kernel(
    x_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, M, N, stride_xm, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCKS: tl.constexpr, SPLIT_K: tl.constexpr,
    DEPTH: tl.constexpr, ROWS: tl.constexpr, FIXUP: tl.constexpr, ASM: tl.constexpr, PTX: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    """Program (column block, block of 8 rows, K split): BLOCK_N columns (64 a warp), BLOCKS blocks
    of 32 of K. ROWS 1: one row of x; 2: up to 8 (program_ptx's `rows`)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    lane = tl.arange(0, BLOCK_N // 2)  # one element a thread
    t = lane % 4
    g = (lane % 32) // 4
    col0 = pid_n * BLOCK_N + lane // 32 * 64 + g * 8  # the lane's 8 columns
    col = tl.minimum(col0, N - 8).to(tl.int64)  # past N: read the last columns, store nothing
    k0 = pid_k * (BLOCKS * 32)
    row0 = pid_m * (1 + 7 * (ROWS - 1))  # a row a program, or 8
    # the row lane g loads, the mma's column g (past M: the last row again, stored nowhere)
    x_row = x_ptr + tl.minimum(row0 + g * (ROWS - 1), M - 1) * stride_xm
    if ASM:
        w_at = w_ptr + ((k0 // 8 + t).to(tl.int64) * N + col)
        g_at = (k0 // GROUP).to(tl.int64) * N + col
        step = tl.zeros_like(col) + N
        y = tl.inline_asm_elementwise(
            PTX, _CONSTRAINTS_1 if ROWS == 1 else _CONSTRAINTS_2,
            [w_at.to(tl.int64), (x_row + k0 + 8 * t).to(tl.int64), (z_ptr + g_at).to(tl.int64),
             (s_ptr + g_at).to(tl.int64), step * 16, step * 2],
            dtype=(tl.float32,) * (8 * ROWS), is_pure=False, pack=1,
        )  # fmt: skip
    else:  # the same sums, each lane over all of its K: codes times x, in fp32
        y = _lane_sums(
            x_ptr,
            w_ptr,
            z_ptr,
            s_ptr,
            M,
            N,
            stride_xm,
            col,
            k0,
            row0 + 2 * t * (ROWS - 1),
            GROUP,
            BLOCKS,
            ROWS,
        )
    count = count_ptr + pid_m * tl.num_programs(0) + pid_n
    if ROWS == 1:  # every lane of a quad holds the same 8 sums: lane t stores columns 2t, 2t + 1
        even = tl.where(t == 0, y[0], tl.where(t == 1, y[2], tl.where(t == 2, y[4], y[6])))
        odd = tl.where(t == 0, y[1], tl.where(t == 1, y[3], tl.where(t == 2, y[5], y[7])))
        cols = (col0 + 2 * t)[:, None] + tl.arange(0, 2)[None, :]
        at = row0 * stride_ym + cols
        _store_output(
            tl.join(even, odd), y_ptr + at, ws_ptr + row0 * N + cols, count, (cols < N) & (row0 < M),
            SPLIT_K, FIXUP,
        )  # fmt: skip
    else:  # lane t: rows 2t and 2t + 1, its 8 columns
        rows = row0 + 2 * t
        v = _join8(y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7])
        v = tl.join(v, _join8(y[8], y[9], y[10], y[11], y[12], y[13], y[14], y[15]))
        c = col0[:, None, None, None, None] + _eight()[None, :, :, :, None]
        r = rows[:, None, None, None, None] + tl.arange(0, 2)[None, None, None, None, :]
        _store_output(
            v, y_ptr + r * stride_ym + c, ws_ptr + r * N + c, count, (c < N) & (r < M), SPLIT_K, FIXUP,
        )  # fmt: skip


@triton.jit
def _join8(a, b, c, d, e, f, g, h):
    """[T] x 8 -> [T, 2, 2, 2]: tl.join adds its axis last, so value 4i + 2j + k is at (k, j, i)."""
    return tl.join(tl.join(tl.join(a, b), tl.join(c, d)), tl.join(tl.join(e, f), tl.join(g, h)))


@triton.jit
def _eight():
    """[2, 2, 2]: the index of the value _join8 puts at each place, k + 2j + 4i at (k, j, i)."""
    i = tl.arange(0, 2)
    return i[:, None, None] + 2 * i[None, :, None] + 4 * i[None, None, :]


@triton.jit
def _lane_sums(x_ptr, w_ptr, z_ptr, s_ptr, M, N, stride_xm, col, k0, rows, GROUP: tl.constexpr,
               BLOCKS: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    """The interpreter's stand-in for the PTX: the lane's 8 column sums for row `rows` (and, ROWS 2,
    rows + 1), as a tuple in the PTX's order."""
    cols = col[:, None] + tl.arange(0, 8)[None, :]
    acc0 = tl.zeros((col.shape[0], 8), dtype=tl.float32)
    acc1 = tl.zeros((col.shape[0], 8), dtype=tl.float32)
    x0 = x_ptr + tl.minimum(rows, M - 1) * stride_xm
    x1 = x_ptr + tl.minimum(rows + 1, M - 1) * stride_xm
    for r in tl.static_range(BLOCKS * 4):
        kr = k0 + 8 * r
        words = tl.load(w_ptr + (kr // 8) * N + cols)
        z = tl.load(z_ptr + (kr // GROUP) * N + cols).to(tl.float32)
        s = tl.load(s_ptr + (kr // GROUP) * N + cols).to(tl.float32)
        for j in tl.static_range(8):
            w = ((((words >> (4 * (j // 2 + 4 * (j % 2)))) & 0xF).to(tl.float32)) - z) * s
            acc0 += w * tl.load(x0 + kr + j)[:, None].to(tl.float32)
            if ROWS == 2:
                acc1 += w * tl.load(x1 + kr + j)[:, None].to(tl.float32)
    if ROWS == 1:
        return (_column(acc0, 0), _column(acc0, 1), _column(acc0, 2), _column(acc0, 3),
                _column(acc0, 4), _column(acc0, 5), _column(acc0, 6), _column(acc0, 7))  # fmt: skip
    return (_column(acc0, 0), _column(acc0, 1), _column(acc0, 2), _column(acc0, 3),
            _column(acc0, 4), _column(acc0, 5), _column(acc0, 6), _column(acc0, 7),
            _column(acc1, 0), _column(acc1, 1), _column(acc1, 2), _column(acc1, 3),
            _column(acc1, 4), _column(acc1, 5), _column(acc1, 6), _column(acc1, 7))  # fmt: skip


@triton.jit
def _column(acc, j: tl.constexpr):
    return tl.sum(tl.where(tl.arange(0, 8)[None, :] == j, acc, 0.0), axis=1)


def mma_fits(x: torch.Tensor, packed: KPacked) -> bool:
    """Can the tensor-core one-row kernel read these? It loads 16 bytes at a time of each (x as the
    streamed kernel does)."""
    k, n = packed.shape
    aligned = all(
        t.data_ptr() % 16 == 0 and t.is_contiguous() for t in (packed.qweight, packed.zeros, packed.scales)
    )
    return (
        aligned
        and packed.paired
        and x.dtype == torch.float16
        and n % 8 == 0
        and k % BLOCK == 0
        and stream_fits(x)
    )


def mma_configs(k: int, group: int, block_m: int = 1) -> list[MatmulConfig]:
    """The tensor-core one-row tiles worth timing at K = k (benchmarks/awq_stream.py sweeps them on a
    GPU), for one row (block_m 1) or up to 8 (block_m 8): 128, 256 or 512 columns (2, 4 or 8 warps);
    2-16 blocks of 32 of K a program (whole groups, or part of one), split K the rest; loads 1, 2
    or 4 blocks ahead."""
    group_blocks = group // BLOCK
    out = []
    for warps in (2, 4, 8):
        for blocks in (2, 4, 8, 16):
            if k % (BLOCK * blocks) or (blocks % group_blocks and group_blocks % blocks):
                continue
            for depth in (1, 2, 4):
                if depth <= blocks:
                    out.append(MatmulConfig(
                        block_m, 64 * warps, BLOCK, k // BLOCK // blocks, warps, 1, fixup=True, mma=True,
                        depth=depth,
                    ))  # fmt: skip
    return out
