"""The streamed one-row AWQ kernel (MatmulConfig.stream): decode's y = x W for fp16 x on paired words.

Why a second one-row kernel. The default (awq_triton._awq_gemv_kernel, half2) loads all of a
program's words, then computes: at the 67B qkv and o shapes its 1,000-1,300 programs run in under
two waves, every program of a wave loads at once and then computes at once, and the memory idles
while they compute (13.2 µs at o on an H200 against 8.2 for the same loads alone; compute and
loads add up). Here a program walks its share of K one unit (`RU` word rows, inside one group) at a
time and loads the next unit (or two, `DEPTH`) before it computes the current one, so each
program's loads overlap its own arithmetic.

It also spends fewer instructions a word (sm_90 SASS, 256 columns, 4 units of 16 word rows: 16.8
against the default's 20.0; the floor of this arithmetic is 13):
- each thread holds all of a unit's rows for its 4 columns (the tile's rows are not split over
  warps), so the sum over rows stays in registers, with no shared memory or shuffles;
- x is loaded inside the PTX, 32 bytes a row pair (two 16-byte loads, shared by the thread's 4
  columns), so Triton never moves x between layouts;
- offsets are 64-bit from the start: a 32-bit row offset sign-extended per load cost a 64-bit
  address computation per load; in 64 bits each load is one base plus a constant.

The products are those of the default's half2 path (_word_dots_f16x2): one lop3 puts two codes under
an fp16 exponent (1024 + c, or 64 + c for a nibble in bits 4-7), one sub.f16x2 takes off 1024 + z or
64 + z exactly, one fma.rn.f16x2 multiplies by x's pair; a column's two words (16 products, 8 a
half) sum in fp16, then in fp32, times the group's scale. So it is as exact as the default.

Needs fp16 x, paired words (KPacked.paired), x 16-byte aligned with rows a multiple of 8 apart, and
units inside groups; awq_triton.launch falls back to the default one-row kernel otherwise. Under
TRITON_INTERPRET (which runs no PTX) the same arithmetic runs in fp16 tensors. Its reference, as
for every AWQ kernel, is tameshi.loading.awq.dequantize_gemm (tests/test_awq_triton.py on CPU,
tests/test_gpu.py at the 67B shapes). awq_matmul takes it for one row where it can
(awq_triton.stream_config); on an H200 at the 67B shapes it is 7-8% faster than the default one-row
kernel (benchmarks/results/awq-stream-h200.md), though not by overlap: the best tile at o loads one
or two units a program. Compute and loads still add up at qkv and o (65-70% of the copy bandwidth).
"""

from __future__ import annotations

import triton
import triton.language as tl

from tameshi.kernels.awq_triton import MatmulConfig, _f16x2, _store_output, _word_products_f16

COLUMNS = 4  # columns a thread holds (one 16-byte load of words), and so the PTX's pack

_ZEROS_PTX = """
            mov.b32 {{l, h}}, ${zl};
            mov.b32 zl, {{{half}, {half}}};
            mov.b32 {{l, h}}, ${zh};
            mov.b32 zh, {{{half}, {half}}};"""
_WORD_PTX = """
            lop3.b32 a, ${w}, 0x000f000f, 0x64006400, 0xea;
            lop3.b32 b, ${w}, 0x00f000f0, 0x54005400, 0xea;
            shr.u32 w8, ${w}, 8;
            lop3.b32 c, w8, 0x000f000f, 0x64006400, 0xea;
            lop3.b32 d, w8, 0x00f000f0, 0x54005400, 0xea;
            sub.f16x2 a, a, zl;
            sub.f16x2 b, b, zh;
            sub.f16x2 c, c, zl;
            sub.f16x2 d, d, zh;
            {first}
            fma.rn.f16x2 acc, b, x{x1}, acc;
            fma.rn.f16x2 acc, c, x{x2}, acc;
            fma.rn.f16x2 acc, d, x{x3}, acc;"""
_SUM_PTX = """
            mov.b32 {{l, h}}, acc;
            cvt.f32.f16 fl, l;
            cvt.f32.f16 fh, h;
            add.f32 ${out}, fl, fh;"""


def row_pair_ptx(columns: int = COLUMNS) -> str:
    """PTX for one row pair of `columns` columns: each column's 16 products, summed in fp32.

    Operands: $0.. the sums (f32); then the even row's words, the odd row's words (b32 each); the
    zeros 1024 + z and 64 + z (fp16, which Triton packs two columns to a register); the address of
    the pair's 16 x (u64, the same for every column). Paired words hold codes 2i, 2i + 1 in nibbles
    i, i + 4: nibbles 0 and 4 pair with x's int32 0, nibbles 1 and 5 with 1, and after the shift by
    8, nibbles 2, 6 and 3, 7 with 2 and 3. The x load is a weak ld.global (not .nc): ptxas may move
    .nc loads above griddepcontrol.wait, before the kernel that writes x has finished."""
    words_a, words_b = columns, 2 * columns
    zeros_lo, zeros_hi, x_at = 3 * columns, 3 * columns + columns // 2, 4 * columns
    body = [
        "{",
        ".reg .b32 a, b, c, d, w8, acc, zl, zh, x0, x1, x2, x3, x4, x5, x6, x7;",
        ".reg .f16 l, h;",
        ".reg .f32 fl, fh;",
        f"ld.global.v4.b32 {{x0, x1, x2, x3}}, [${x_at}];",
        f"ld.global.v4.b32 {{x4, x5, x6, x7}}, [${x_at}+16];",
    ]
    for col in range(columns):
        half = "h" if col % 2 else "l"
        body.append(_ZEROS_PTX.format(zl=zeros_lo + col // 2, zh=zeros_hi + col // 2, half=half))
        body.append(_WORD_PTX.format(w=words_a + col, first="mul.rn.f16x2 acc, a, x0;", x1=1, x2=2, x3=3))
        body.append(
            _WORD_PTX.format(w=words_b + col, first="fma.rn.f16x2 acc, a, x4, acc;", x1=5, x2=6, x3=7)
        )
        body.append(_SUM_PTX.format(out=col))
    body.append("}")
    return "\n".join(body)


_ROW_PAIR_PTX = tl.constexpr(row_pair_ptx())
_PACK = tl.constexpr(COLUMNS)
_CONSTRAINTS = tl.constexpr(",".join(["=f"] * COLUMNS + ["r"] * (3 * COLUMNS) + ["l"] * COLUMNS))


@triton.jit
def _load_unit(w_ptr, z_ptr, s_ptr, unit, offs_n, mask_n, N, RU: tl.constexpr, GROUP: tl.constexpr,
               EVEN: tl.constexpr):  # fmt: skip
    """Unit `unit`'s words (even and odd rows, [RU/2, BLOCK_N] each), and its group's zeros and scales."""
    rows = unit.to(tl.int64) * RU + 2 * tl.arange(0, RU // 2).to(tl.int64)  # 64-bit: see the docstring
    at = w_ptr + (rows[:, None] * N + offs_n.to(tl.int64)[None, :])
    g = unit * (8 * RU) // GROUP * N + offs_n
    if EVEN:
        return tl.load(at), tl.load(at + N), tl.load(z_ptr + g), tl.load(s_ptr + g)
    words_a = tl.load(at, mask=mask_n[None, :], other=0)
    words_b = tl.load(at + N, mask=mask_n[None, :], other=0)
    return (
        words_a,
        words_b,
        tl.load(z_ptr + g, mask=mask_n, other=0.0),
        tl.load(s_ptr + g, mask=mask_n, other=0.0),
    )


@triton.jit
def _x(x_words, i: tl.constexpr, shape: tl.constexpr):
    """x pair i (an int32 word) of each row pair, broadcast over the columns."""
    return tl.broadcast_to(tl.load(x_words + i)[:, None], shape)


@triton.jit
def _unit_dots(words_a, words_b, z, x_row, unit, RU: tl.constexpr, ASM: tl.constexpr):
    """The unit's products [RU/2, BLOCK_N], each row pair's 16 summed in fp32, not yet scaled."""
    x_at = x_row + unit.to(tl.int64) * (8 * RU) + 16 * tl.arange(0, RU // 2).to(tl.int64)  # row pairs
    z_lo = tl.broadcast_to((z + 1024.0)[None, :], words_a.shape)
    z_hi = tl.broadcast_to((z + 64.0)[None, :], words_a.shape)
    if ASM:
        dots = tl.inline_asm_elementwise(
            _ROW_PAIR_PTX, _CONSTRAINTS,
            [words_a, words_b, z_lo, z_hi, tl.broadcast_to(x_at.to(tl.int64)[:, None], words_a.shape)],
            dtype=tl.float32, is_pure=False, pack=_PACK,
        )  # fmt: skip
    else:  # the same arithmetic in fp16 tensors (_word_products_f16); x pairs as int32 words
        xw = x_at.to(tl.pointer_type(tl.int32), bitcast=True)
        shape: tl.constexpr = words_a.shape
        zl, zh = _f16x2(z_lo), _f16x2(z_hi)
        lo, hi = _word_products_f16(
            words_a, zl, zh, _x(xw, 0, shape), _x(xw, 1, shape), _x(xw, 2, shape), _x(xw, 3, shape), 0.0, 0.0
        )
        lo, hi = _word_products_f16(
            words_b, zl, zh, _x(xw, 4, shape), _x(xw, 5, shape), _x(xw, 6, shape), _x(xw, 7, shape), lo, hi
        )
        dots = lo.to(tl.float32) + hi.to(tl.float32)
    return dots


@triton.jit
def _unit_sums(
    acc, words_a, words_b, z, s, x_row, _unused, _unused2, unit, RU: tl.constexpr, ASM: tl.constexpr
):
    """acc [BLOCK_N] + the unit's products, summed over its rows (in each thread) times the scale
    (stream_units' SUMS: x is one pointer, the other two are not used)."""
    return acc + tl.sum(_unit_dots(words_a, words_b, z, x_row, unit, RU, ASM), axis=0) * s.to(tl.float32)


@triton.jit
def stream_units(
    w_ptr, z_ptr, s_ptr, first, offs_n, mask_n, N, x_a, x_b, x_c, RU: tl.constexpr, GROUP: tl.constexpr,
    UNITS: tl.constexpr, DEPTH: tl.constexpr, EVEN: tl.constexpr, PDL: tl.constexpr, SUMS: tl.constexpr,
    ASM: tl.constexpr,
):  # fmt: skip
    """A program's sum [BLOCK_N] over UNITS units of RU word rows from unit `first` on, loading DEPTH
    (1 or 2) units ahead of the one it computes; SUMS(acc, words_a, words_b, zeros, scales, x_a,
    x_b, x_c, unit, RU, ASM) adds one unit (x_a-x_c: where the kernel's x is). With PDL the first
    units' weights load before the wait for the kernel that writes x. (Also the dp2a kernel's, awq_x16.)"""
    a0, b0, z0, s0 = _load_unit(w_ptr, z_ptr, s_ptr, first, offs_n, mask_n, N, RU, GROUP, EVEN)
    if DEPTH == 2:
        a1, b1, z1, s1 = _load_unit(w_ptr, z_ptr, s_ptr, first + 1, offs_n, mask_n, N, RU, GROUP, EVEN)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros(offs_n.shape, dtype=tl.float32)
    # Unit i + DEPTH is loaded before unit i is summed, into registers. Unrolled: in a loop, ptxas
    # (sm_90) sank the next unit's loads below the current unit's arithmetic, so nothing overlapped;
    # unrolled it issues them while it computes (row by row, as registers free up).
    for i in tl.static_range(UNITS - DEPTH):
        a2, b2, z2, s2 = _load_unit(
            w_ptr, z_ptr, s_ptr, first + i + DEPTH, offs_n, mask_n, N, RU, GROUP, EVEN
        )
        acc = SUMS(acc, a0, b0, z0, s0, x_a, x_b, x_c, first + i, RU, ASM)
        if DEPTH == 2:
            a0, b0, z0, s0 = a1, b1, z1, s1
            a1, b1, z1, s1 = a2, b2, z2, s2
        else:
            a0, b0, z0, s0 = a2, b2, z2, s2
    if DEPTH == 2:
        acc = SUMS(acc, a0, b0, z0, s0, x_a, x_b, x_c, first + UNITS - 2, RU, ASM)
        acc = SUMS(acc, a1, b1, z1, s1, x_a, x_b, x_c, first + UNITS - 1, RU, ASM)
    else:
        acc = SUMS(acc, a0, b0, z0, s0, x_a, x_b, x_c, first + UNITS - 1, RU, ASM)
    return acc


@triton.jit
def _awq_gemv_stream_kernel(
    x_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, N, stride_xm, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, RU: tl.constexpr, UNITS: tl.constexpr,
    SPLIT_K: tl.constexpr, DEPTH: tl.constexpr, FIXUP: tl.constexpr, EVEN: tl.constexpr,
    ASM: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    """Program (column block, row, K split) sums UNITS units of RU word rows (stream_units)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    x_row = x_ptr + row * stride_xm
    acc = stream_units(
        w_ptr, z_ptr, s_ptr, pid_k * UNITS, offs_n, mask_n, N, x_row, x_row, x_row, RU, GROUP, UNITS, DEPTH,
        EVEN, PDL, _unit_sums, ASM,
    )  # fmt: skip
    count = count_ptr + row * tl.num_programs(0) + pid_n
    _store_output(
        acc, y_ptr + row * stride_ym + offs_n, ws_ptr + row * N + offs_n, count, mask_n, SPLIT_K, FIXUP
    )


def stream_configs(k: int, group: int) -> list[MatmulConfig]:
    """The streamed tiles worth timing at K = k (benchmarks/awq_stream.py sweeps them on a GPU):
    128, 256 or 512 columns (1, 2 or 4 warps); units of one group (16 word rows at group 128) loaded
    one ahead, or of half that, one or two ahead; up to 1024 of K a program, split K the rest."""
    out = []
    units_and_depths = dict.fromkeys([(min(group, 128), 1), (min(group, 64), 1), (min(group // 2, 64), 2)])
    for block_n in (128, 256, 512):
        for block_k, depth in units_and_depths:
            if block_k < 16:
                continue
            units = k // block_k
            for per_program in (1, 2, 4, 8, 16):
                if units % per_program or (depth == 2 and per_program < 3) or per_program * block_k > 1024:
                    continue
                out.append(MatmulConfig(
                    1, block_n, block_k, units // per_program, block_n // 128, 1,
                    by_word=True, magic=True, fixup=True, stream=True, depth=depth,
                ))  # fmt: skip
    return out
