"""AWQ 4-bit matmuls in Triton, on a layout repacked once at load.

Kernel layout (`KPacked`): codes packed along K, `qweight [K/8, N]` int32 with the code of row
8r + j in bits 4j of word (r, n) (or, `paired`, in bits 4 (j // 2 + 4 (j % 2)): codes 2i and 2i + 1
in the word's two halves, where one shift and mask take them out as a K-adjacent pair); `zeros` and
`scales [K/group, N]` fp16. A program reading a
[BLOCK_K, BLOCK_N] tile then loads whole rows of N (coalesced), each word once per 8 rows of K
(the repeats are served by L1), and unpacks with one shift per row: no reshapes or shuffles, which
made a kernel on AutoAWQ's own interleaved [K, N/8] layout run at 12% of the memory bandwidth.

`awq_matmul` multiplies with the dequantization fused in. It works on the raw codes and applies
zero and scale once per group and column:

    x · ((q - z) s)  =  s · (x · q  -  z · Σx)        (over one group of K)

Decode (M = 1) multiplies on CUDA cores; a few rows and more use a tensor-core dot. Few rows
split K across programs so that enough of them stream weights at once.

`awq_dequantize` writes W^T in the activation dtype, for prefill where cuBLAS on the dense matrix
can beat a fused kernel. All are held to `tameshi.loading.awq.dequantize_gemm` (the PyTorch
reference) by tests/test_awq_triton.py, under TRITON_INTERPRET=1 on CPU.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from tameshi.kernels import interpreted, pdl
from tameshi.loading.awq import unpack_gemm

if TYPE_CHECKING:
    from tameshi.kernels.awq_x16 import QuantizedX


@dataclass
class KPacked:
    qweight: torch.Tensor  # [K/8, N] int32, codes packed along K
    zeros: torch.Tensor  # [K/group, N] fp16 (whole numbers 0..15)
    scales: torch.Tensor  # [K/group, N] fp16
    group: int
    # nibble order in a word: code j in nibble j, or (paired) in nibble j // 2 + 4 (j % 2), so that
    # codes 2i and 2i + 1 sit in the low and high halves and one shift and mask give a K-adjacent pair
    paired: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0] * 8, self.qweight.shape[1]


def nibbles(paired: bool) -> list[int]:
    """The nibble of a word that holds code j, for j = 0..7 (KPacked.paired)."""
    return [j // 2 + 4 * (j % 2) if paired else j for j in range(8)]


def kpack(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int, paired: bool = False
) -> KPacked:
    """AutoAWQ GEMM tensors ([K, N/8] interleaved nibbles) -> the kernel layout, on their device."""
    codes = unpack_gemm(qweight).to(torch.int32)  # [K, N] in natural order
    k, n = codes.shape
    words = torch.zeros(k // 8, n, dtype=torch.int32, device=codes.device)
    for j, nibble in enumerate(nibbles(paired)):
        words |= codes[j::8] << (4 * nibble)  # int32 wraps for nibble 7, as the kernel's shift expects
    zeros = unpack_gemm(qzeros).to(torch.float16)
    return KPacked(words, zeros, scales.to(torch.float16).contiguous(), group, paired)


def kunpack(packed: KPacked) -> torch.Tensor:
    """The codes [K, N] back from the kernel layout (for the reference and the tests)."""
    shifts = torch.tensor(nibbles(packed.paired), device=packed.qweight.device, dtype=torch.int32) * 4
    codes = (packed.qweight[:, None, :] >> shifts[None, :, None]) & 0xF  # [K/8, 8, N]
    return codes.reshape(-1, packed.qweight.shape[1])


def kdequantize_reference(packed: KPacked) -> torch.Tensor:
    """W^T [K, N] float32: (q - z) * s. Equals dequantize_gemm on the tensors it was packed from."""
    g = packed.group
    q = kunpack(packed).float()
    return (q - packed.zeros.float().repeat_interleave(g, 0)) * packed.scales.float().repeat_interleave(g, 0)


@triton.jit
def _nibble(j, PAIRED: tl.constexpr):
    """The nibble of a word that holds code j (nibbles(), in a kernel)."""
    if PAIRED:
        return j // 2 + 4 * (j % 2)
    else:
        return j


@triton.jit
def _partial_product(x, codes, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr, MAGIC: tl.constexpr = False):
    """x [BLOCK_M, R] times codes [R, BLOCK_N] (ints 0..15), in fp32."""
    if USE_DOT:
        if MAGIC:  # fp16 x only: 0x6400 | c is the fp16 number 1024 + c (as in _code_pairs); the
            # caller subtracts the 1024 with the zero point: x · (1024 + c - z) = x · (1024 + c) - (1024 + z) Σx
            codes_x = (codes | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        else:
            # Via fp32: the interpreter converts int -> bf16 wrongly. 0..15 is exact in fp16 and bf16.
            codes_x = codes.to(tl.float32).to(x.dtype)
        if DOT_FP32:  # the interpreter also multiplies bf16 wrongly; fp32 is exact for these operands
            out = tl.dot(x.to(tl.float32), codes_x.to(tl.float32), input_precision="ieee")
        else:
            out = tl.dot(x, codes_x)  # fp32 accumulate
    else:  # BLOCK_M == 1: a dot product per column on CUDA cores
        out = tl.sum(tl.trans(x.to(tl.float32)) * codes.to(tl.float32), axis=0)[None, :]
    return out


@triton.jit
def _store_output(out, y_ptrs, ws_ptrs, count_ptr, mask, SPLIT_K: tl.constexpr, FIXUP: tl.constexpr):
    """Write this program's part of y. Split K: add it into y (float32, zeroed before the kernel and
    cast after it); or, with FIXUP, into a float32 workspace, and the split that finishes a tile
    last (a counter per tile tells it) writes the sum to y in y's dtype and sets workspace and
    counter back to zero for the next call: one kernel launch instead of three."""
    if SPLIT_K == 1:
        tl.store(y_ptrs, out.to(y_ptrs.dtype.element_ty), mask=mask)
    elif not FIXUP:
        tl.atomic_add(y_ptrs, out, mask=mask)
    else:
        tl.atomic_add(ws_ptrs, out, mask=mask, sem="relaxed")
        # The barrier orders every thread's adds before thread 0's count, whose release is cumulative
        # (PTX memory model): the program that reads the count sees all of them. A fence in every
        # thread as well cost the one-row kernel 12% at the 67B shapes on an H200.
        tl.debug_barrier()
        done = tl.atomic_add(count_ptr, 1, sem="acq_rel")  # release: its adds; acquire: the others'
        if done == SPLIT_K - 1:
            total = tl.load(ws_ptrs, mask=mask, other=0.0, cache_modifier=".cg")  # from L2, not L1
            tl.store(y_ptrs, total.to(y_ptrs.dtype.element_ty), mask=mask)
            tl.store(ws_ptrs, tl.zeros_like(total), mask=mask)
            tl.store(count_ptr, 0)


@triton.jit
def _awq_matmul_kernel(
    x_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, M, N, stride_xm, stride_ym,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr,
    BY_WORD: tl.constexpr, MAGIC: tl.constexpr, FIXUP: tl.constexpr, PAIRS: tl.constexpr, SCALED: tl.constexpr,
    ASM: tl.constexpr, PAIRED: tl.constexpr, SWAP: tl.constexpr = False,
):  # fmt: skip
    # BLOCKS_PER_SPLIT is a compile-time constant: a loop over a run-time bound trips Triton's
    # interpreter under numpy >= 2.4, and a known trip count pipelines as well.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    shifts = _nibble(offs_k % 8, PAIRED) * 4
    w_ptrs = w_ptr + (offs_k // 8)[:, None] * N + offs_n[None, :]
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]

    if SWAP:  # y^T = W x^T: the dequantized tile is the dot's first operand, which may stay in registers
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(BLOCKS_PER_SPLIT):
        k0 = (pid_k * BLOCKS_PER_SPLIT + i) * BLOCK_K
        if PAIRS:
            # Each word loaded once ([BLOCK_N, R]: n, then word row r) and turned into fp16 codes two at
            # a time (exponent bits, as in _code_pairs: one shift and one bit operation per two codes).
            # Joins keep them in registers as [BLOCK_N, R, 2, 2, 2], the pair of nibbles jj and jj + 4
            # of word r at [n, r, jj // 2, jj % 2, :]. Paired words hold codes 2jj and 2jj + 1 there:
            # [n, 8r + 2jj + h], K in order. Otherwise codes jj and jj + 4: moving the last axis ahead
            # of the two before makes that [n, 8r + 4h + jj], K in order (a permute costs byte moves).
            offs_r = tl.arange(0, BLOCK_K // 8)
            words = tl.load(
                w_ptr + (k0 // 8 + offs_r)[None, :] * N + offs_n[:, None], mask=mask_n[:, None], other=0
            )
            p02 = tl.join(_pair_bits(words, 0), _pair_bits(words, 2))  # a join's new axis is the last
            p13 = tl.join(_pair_bits(words, 1), _pair_bits(words, 3))
            pairs = tl.join(p02, p13)
            x = tl.load(x_ptrs + k0, mask=mask_m[:, None], other=0.0)
            if SCALED:  # W itself in fp16, (c - z) * s rounded once, summed by the dot into acc
                g = k0 // GROUP
                z16 = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0) + 1024.0
                s16 = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0)
                lo, hi = _scaled_halves(pairs, z16[:, None, None, None], s16[:, None, None, None], ASM)
            else:
                lo, hi = _halves(pairs, ASM)
            codes = tl.join(lo, hi)
            if not PAIRED:
                codes = tl.permute(codes, (0, 1, 4, 2, 3))
            codes_t = tl.reshape(codes, (BLOCK_N, BLOCK_K))
            if SCALED:
                if SWAP:
                    acc_t = tl.dot(codes_t, tl.trans(x), acc_t)
                else:
                    acc = tl.dot(x, tl.trans(codes_t), acc)
            else:
                xq = tl.dot(x, tl.trans(codes_t))
                x_sum = tl.sum(x.to(tl.float32), axis=1)
        elif BY_WORD:
            # Each word loaded once and spread over its 8 rows in registers: [BLOCK_K/8, 8, BLOCK_N]
            # shifts, read as [BLOCK_K, BLOCK_N] (row 8r + j is code j of word row r), one dot.
            offs_r = tl.arange(0, BLOCK_K // 8)
            words = tl.load(
                w_ptr + (k0 // 8 + offs_r)[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0
            )
            nibbles = (words[:, None, :] >> (_nibble(tl.arange(0, 8), PAIRED) * 4)[None, :, None]) & 0xF
            codes = tl.reshape(nibbles, (BLOCK_K, BLOCK_N))
            x = tl.load(x_ptrs + k0, mask=mask_m[:, None], other=0.0)
            xq = _partial_product(x, codes, USE_DOT, DOT_FP32, MAGIC)
            x_sum = tl.sum(x.to(tl.float32), axis=1)
        else:
            # Each word loaded for all 8 of its rows (repeats hit L1), one shift per row.
            packed = tl.load(w_ptrs + (k0 // 8) * N, mask=mask_n[None, :], other=0)
            codes = (packed >> shifts[:, None]) & 0xF  # [BLOCK_K, BLOCK_N], 0..15
            x = tl.load(x_ptrs + k0, mask=mask_m[:, None], other=0.0)
            xq = _partial_product(x, codes, USE_DOT, DOT_FP32, MAGIC)
            x_sum = tl.sum(x.to(tl.float32), axis=1)
        if not (PAIRS and SCALED):
            g = k0 // GROUP
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            if MAGIC or PAIRS:
                z += 1024.0  # the codes came as 1024 + c (_partial_product)
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            acc += s[None, :] * (xq - x_sum[:, None] * z[None, :])

    if SWAP:
        acc = tl.trans(acc_t)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    ws_ptrs = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    count = count_ptr + pid_m * tl.num_programs(0) + pid_n
    _store_output(acc, y_ptrs, ws_ptrs, count, mask, SPLIT_K, FIXUP)


@triton.jit
def _pair_bits(words, jj: tl.constexpr):
    """Nibbles jj and jj + 4 of each word under the fp16 exponent of 1024, one in each half."""
    return ((words >> (4 * jj)) & 0x000F000F) | 0x64006400


@triton.jit
def _halves(pair, ASM: tl.constexpr):
    """The two fp16 numbers of each word: a register move (PTX), or masks and shifts where the
    interpreter runs (it runs no PTX)."""
    if ASM:
        lo, hi = tl.inline_asm_elementwise(
            "mov.b32 {$0, $1}, $2;", "=h,=h,r", [pair], dtype=(tl.float16, tl.float16), is_pure=True, pack=1
        )
    else:
        lo = (pair & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
        hi = (pair >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def _scaled_halves(pair, zero, scale, ASM: tl.constexpr):
    """The two weights of each pair word in fp16: (1024 + c) - (1024 + z) is c - z exactly, and times
    the scale it is rounded once, as the reference rounds (q - z) * s. `zero` (1024 + z) and `scale`
    are fp16, broadcast against `pair`; PTX does both halves in one packed subtract and one multiply."""
    if ASM:
        zero = tl.broadcast_to(zero, pair.shape).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        scale = tl.broadcast_to(scale, pair.shape).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b32 t; sub.f16x2 t, $2, $3; mul.f16x2 t, t, $4; mov.b32 {$0, $1}, t; }",
            "=h,=h,r,r,r", [pair, zero | (zero << 16), scale | (scale << 16)],
            dtype=(tl.float16, tl.float16), is_pure=True, pack=1,
        )  # fmt: skip
    else:
        lo, hi = _halves(pair, False)
        lo = (lo - zero) * scale
        hi = (hi - zero) * scale
    return lo, hi


@triton.jit
def _pair_codes(jj: tl.constexpr, PAIRED: tl.constexpr):
    """Which codes of a word nibbles jj and jj + 4 hold: jj and jj + 4, or in paired words 2jj and 2jj + 1."""
    if PAIRED:
        return 2 * jj, 2 * jj + 1
    else:
        return jj, jj + 4


@triton.jit
def _code_pairs(words, jj: tl.constexpr, ASM: tl.constexpr):
    """Nibbles jj and jj + 4 (jj in 0..3) of each word as fp32 numbers 1024 + c, by exponent bits.

    One shift and one bit operation put both nibbles under the fp16 exponent of 1024 (0x6400 in each
    half of the word: each half is then the fp16 number 1024 + c exactly); the halves become fp32 on
    the FMA pipe. The one-row kernel spent ~3 integer instructions per weight on shift, extract and
    int-to-float (Nsight Compute: its integer pipe was the busiest, 74%): this spends under one. The
    1024 leaves with the zero point. ASM splits the word's halves with a register move (PTX); the
    interpreter, which runs no PTX, masks and shifts instead."""
    lo, hi = _halves(_pair_bits(words, jj), ASM)
    return lo.to(tl.float32), hi.to(tl.float32)


@triton.jit
def _pair_products(words, x_at, ASM: tl.constexpr, PAIRED: tl.constexpr):
    """Each word's x · (1024 + code) over its 8 codes, two at a time (_code_pairs), and Σ x: words
    [..., N] against x at `x_at` [...] (the pointers to each word's first x) -> ([..., N], [...])."""
    xq = tl.zeros(words.shape, dtype=tl.float32)
    x_sum = tl.zeros(x_at.shape, dtype=tl.float32)
    for jj in tl.static_range(4):
        j_lo, j_hi = _pair_codes(jj, PAIRED)
        x_lo = tl.load(x_at + j_lo).to(tl.float32)
        x_hi = tl.load(x_at + j_hi).to(tl.float32)
        lo, hi = _code_pairs(words, jj, ASM)
        xq += tl.expand_dims(x_lo, len(x_at.shape)) * lo  # two statements: two fused multiply-adds
        xq += tl.expand_dims(x_hi, len(x_at.shape)) * hi
        x_sum += x_lo + x_hi
    return xq, x_sum


@triton.jit
def _f16x2(h):
    """fp16 values as int32 words holding each value twice (a packed pair of equal halves)."""
    bits = h.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return bits | (bits << 16)


@triton.jit
def _x_pair(x_at, jj: tl.constexpr):
    """The x of codes jj and jj + 4 (nibbles jj and jj + 4 of a word in natural order), packed low,
    high in an int32 (paired words' x pairs are K-adjacent: _word_dots_f16x2 loads them whole)."""
    lo = tl.load(x_at + jj).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi = tl.load(x_at + jj + 4).to(tl.int16, bitcast=True).to(tl.int32)
    return lo | (hi << 16)


# One word's 8 products added into the packed fp16 sum `acc` (_word_dots_f16x2): the word in
# operand {w}, the zero pairs (1024 + z, 64 + z) in $3 and $4, its x pairs in {x0}..{x3}.
_WORD_PTX = """
            lop3.b32 a, {w}, 0x000f000f, 0x64006400, 0xea;
            lop3.b32 b, {w}, 0x00f000f0, 0x54005400, 0xea;
            shr.u32 w8, {w}, 8;
            lop3.b32 c, w8, 0x000f000f, 0x64006400, 0xea;
            lop3.b32 d, w8, 0x00f000f0, 0x54005400, 0xea;
            sub.f16x2 a, a, $3;
            sub.f16x2 b, b, $4;
            sub.f16x2 c, c, $3;
            sub.f16x2 d, d, $4;
            {first} acc, a, {x0}{acc};
            fma.rn.f16x2 acc, b, {x1}, acc;
            fma.rn.f16x2 acc, c, {x2}, acc;
            fma.rn.f16x2 acc, d, {x3}, acc;"""
# Two words (operands $1 and $2, x pairs $5-$8 and $9-$12) into one fp16 sum, its halves added in fp32.
_WORD_PAIR_DOTS_PTX = tl.constexpr(
    """{
            .reg .b32 a, b, c, d, w8, acc;
            .reg .f16 l, h;
            .reg .f32 fl, fh;"""
    + _WORD_PTX.format(w="$1", x0="$5", x1="$6", x2="$7", x3="$8", first="mul.rn.f16x2", acc="")
    + _WORD_PTX.format(w="$2", x0="$9", x1="$10", x2="$11", x3="$12", first="fma.rn.f16x2", acc=", acc")
    + """
            mov.b32 {l, h}, acc;
            cvt.f32.f16 fl, l;
            cvt.f32.f16 fh, h;
            add.f32 $0, fl, fh;
            }"""
)


@triton.jit
def _word_dots_f16x2(words_a, words_b, z16, x_a, ASM: tl.constexpr, PAIRED: tl.constexpr):
    """Σ x · (c - z) over the 16 codes of each two K-adjacent words, in packed fp16: words_a and
    words_b [B, H, N] int32, the even and odd word rows; zeros z16 [B, 1, N] fp16; x_a [B, H, 1] the
    pointers to each even word's first x (the odd word's 8 follow) -> float32 [B, H, N].

    One mask (lop3) puts nibbles j and j + 4 under an fp16 exponent, one in each half: under 1024
    (0x6400) a nibble in bits 0-3 of a half is 1024 + c, and under 64 (0x5400) one in bits 4-7 is
    64 + c, as 64's mantissa step is 1/16. So w gives the pairs of nibbles 0 and 1 without a shift,
    w >> 8 those of 2 and 3. Less 1024 + z or 64 + z, a pair is c - z exactly; times x's pair and
    summed in fp16 (sub.f16x2, fma.rn.f16x2), 8 products per half, then the halves in fp32: 14.5
    PTX instructions per word. A half's fp16 sum overflows only where x nears 550 on all 8 of its
    products (|c - z| <= 15).

    The two words come in as two loads, already in the layout of their columns, and a pair's 16 x in
    one 32-byte load. Split from one [B, 2H, N] load, the words went through shared memory to be
    paired, and every thread held every row's x: 217 registers a thread on sm_90, 96 now. (Eight
    4-byte x loads a pair instead of one made it slower.)"""
    shape: tl.constexpr = words_a.shape
    if PAIRED:  # the two words' 16 x are 8 K-adjacent pairs: 8 int32 words in one 32-byte load
        x_words = x_a.to(tl.pointer_type(tl.int32))
        xv = tl.load(x_words + tl.arange(0, 8)[None, None, :])  # [B, H, 8]
        x_lo, x_hi = tl.split(tl.reshape(xv, (shape[0], shape[1], 2, 4)).permute(0, 1, 3, 2))
        x0a, x1a, x2a, x3a = _four(x_lo, shape)
        x0b, x1b, x2b, x3b = _four(x_hi, shape)
    else:
        x0a, x1a, x2a, x3a = _x_pairs(x_a, shape)
        x0b, x1b, x2b, x3b = _x_pairs(x_a + 8, shape)
    z_lo = tl.broadcast_to(_f16x2(z16 + 1024.0), shape)
    z_hi = tl.broadcast_to(_f16x2(z16 + 64.0), shape)
    if ASM:
        return tl.inline_asm_elementwise(
            _WORD_PAIR_DOTS_PTX,
            "=r,r,r,r,r,r,r,r,r,r,r,r,r",
            [words_a, words_b, z_lo, z_hi, x0a, x1a, x2a, x3a, x0b, x1b, x2b, x3b],
            dtype=tl.float32, is_pure=True, pack=1,
        )  # fmt: skip
    else:  # the same arithmetic in fp16 tensors (the interpreter runs no PTX; its fma rounds twice)
        lo, hi = _word_products_f16(words_a, z_lo, z_hi, x0a, x1a, x2a, x3a, 0.0, 0.0)
        lo, hi = _word_products_f16(words_b, z_lo, z_hi, x0b, x1b, x2b, x3b, lo, hi)
        return lo.to(tl.float32) + hi.to(tl.float32)


@triton.jit
def _four(t, shape: tl.constexpr):
    """[B, H, 4] -> its 4 columns, each [B, H, 1] broadcast to `shape`."""
    t01, t23 = tl.split(tl.reshape(t, (shape[0], shape[1], 2, 2)).permute(0, 1, 3, 2))
    t0, t1 = tl.split(t01)
    t2, t3 = tl.split(t23)
    return (
        tl.broadcast_to(tl.expand_dims(t0, 2), shape),
        tl.broadcast_to(tl.expand_dims(t1, 2), shape),
        tl.broadcast_to(tl.expand_dims(t2, 2), shape),
        tl.broadcast_to(tl.expand_dims(t3, 2), shape),
    )


@triton.jit
def _x_pairs(x_at, shape: tl.constexpr):
    """A word's x pairs in natural nibble order (_x_pair for nibbles 0-3), broadcast to `shape`."""
    return (
        tl.broadcast_to(_x_pair(x_at, 0), shape),
        tl.broadcast_to(_x_pair(x_at, 1), shape),
        tl.broadcast_to(_x_pair(x_at, 2), shape),
        tl.broadcast_to(_x_pair(x_at, 3), shape),
    )


@triton.jit
def _word_products_f16(words, z_lo, z_hi, x0, x1, x2, x3, acc_lo, acc_hi):
    """One word's 8 products added to fp16 sums, half by half (_word_dots_f16x2 without PTX)."""
    w8 = words >> 8  # arithmetic shift: the bits it brings in are masked off
    acc_lo, acc_hi = _f16x2_products((words & 0x000F000F) | 0x64006400, z_lo, x0, acc_lo, acc_hi)
    acc_lo, acc_hi = _f16x2_products((words & 0x00F000F0) | 0x54005400, z_hi, x1, acc_lo, acc_hi)
    acc_lo, acc_hi = _f16x2_products((w8 & 0x000F000F) | 0x64006400, z_lo, x2, acc_lo, acc_hi)
    return _f16x2_products((w8 & 0x00F000F0) | 0x54005400, z_hi, x3, acc_lo, acc_hi)


@triton.jit
def _f16x2_products(pair, zero, x, acc_lo, acc_hi):
    """acc + (pair - zero) * x, half by half in fp16 (_word_dots_f16x2 without PTX)."""
    c_lo, c_hi = _halves(pair, False)
    z_lo, z_hi = _halves(zero, False)
    x_lo, x_hi = _halves(x, False)
    return acc_lo + (c_lo - z_lo) * x_lo, acc_hi + (c_hi - z_hi) * x_hi


@triton.jit
def _gemv_block(acc, x_row, w_ptr, z_ptr, s_ptr, k0, offs_r, offs_n, mask_n, N, GROUP: tl.constexpr,
                MAGIC: tl.constexpr, ASM: tl.constexpr, PAIRED: tl.constexpr):  # fmt: skip
    """_awq_gemv_kernel's work on one block of K starting at k0: acc [R, BLOCK_N] += its products."""
    words = tl.load(w_ptr + (k0 // 8 + offs_r)[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0)
    x_at = x_row + k0 + offs_r * 8
    if MAGIC:
        xq, x_sum = _pair_products(words, x_at, ASM, PAIRED)
    else:
        xq = tl.zeros(acc.shape, dtype=tl.float32)
        x_sum = tl.zeros((acc.shape[0],), dtype=tl.float32)
        for j in tl.static_range(8):
            x = tl.load(x_at + j).to(tl.float32)
            xq += x[:, None] * ((words >> (4 * _nibble(j, PAIRED))) & 0xF).to(tl.float32)
            x_sum += x
    g = k0 // GROUP
    z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if MAGIC:
        z += 1024.0  # the codes came as 1024 + c
    sc = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    return acc + sc[None, :] * (xq - x_sum[:, None] * z[None, :])


@triton.jit
def _awq_gemv_kernel(
    x_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, N, stride_xm, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCKS_PER_SPLIT: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr, FIXUP: tl.constexpr,
    WHOLE: tl.constexpr, PAIRED: tl.constexpr, PDL: tl.constexpr = False, HALF2: tl.constexpr = False,
):  # fmt: skip
    """One activation row (decode): each packed word loaded once, its 8 codes multiplied on CUDA cores
    into a [BLOCK_K/8, BLOCK_N] accumulator that is reduced over K only once, at the end (a reduction
    per K block would cross threads every time). MAGIC: codes to floats two at a time (_code_pairs).
    PDL (tameshi.kernels): the whole-split form loads its weights before it waits for the kernel
    before it, which computes x. HALF2 (whole split, fp16 x): each word's products in packed fp16
    (_word_dots_f16x2)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    pid_k = tl.program_id(2)
    R: tl.constexpr = BLOCK_K // 8
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R)
    mask_n = offs_n < N
    x_row = x_ptr + row * stride_xm
    if WHOLE:
        # All of this program's blocks as one [blocks, R, BLOCK_N] tensor: every load is issued before
        # the first is used (a loop waits for each block's words in turn).
        offs_b = tl.arange(0, BLOCKS_PER_SPLIT)
        kb = pid_k * BLOCKS_PER_SPLIT + offs_b
        g = (kb * BLOCK_K // GROUP)[:, None] * N + offs_n[None, :]
        if HALF2:  # the even and odd word rows apart (_word_dots_f16x2)
            rows_a = (kb * R)[:, None, None] + 2 * tl.arange(0, R // 2)[None, :, None]
            w_a = w_ptr + rows_a * N + offs_n[None, None, :]
            words_a = tl.load(w_a, mask=mask_n[None, None, :], other=0)
            words_b = tl.load(w_a + N, mask=mask_n[None, None, :], other=0)
            z16 = tl.load(z_ptr + g, mask=mask_n[None, :], other=0.0)  # whole numbers 0..15
            sc = tl.load(s_ptr + g, mask=mask_n[None, :], other=0.0).to(tl.float32)
            if PDL:
                tl.extra.cuda.gdc_wait()
            dots = _word_dots_f16x2(words_a, words_b, z16[:, None, :], x_row + rows_a * 8, ASM, PAIRED)
            out = tl.sum(tl.sum(dots, axis=1) * sc, axis=0)
        else:
            words = tl.load(
                w_ptr + ((kb * R)[:, None, None] + offs_r[None, :, None]) * N + offs_n[None, None, :],
                mask=mask_n[None, None, :], other=0,
            )  # fmt: skip
            z = tl.load(z_ptr + g, mask=mask_n[None, :], other=0.0).to(tl.float32) + 1024.0
            sc = tl.load(s_ptr + g, mask=mask_n[None, :], other=0.0).to(tl.float32)
            if PDL:
                tl.extra.cuda.gdc_wait()
            x_at = x_row + (kb * BLOCK_K)[:, None] + offs_r[None, :] * 8
            xq, x_sum = _pair_products(words, x_at, ASM, PAIRED)
            part = sc[:, None, :] * (xq - x_sum[:, :, None] * z[:, None, :])
            out = tl.sum(tl.reshape(part, (BLOCKS_PER_SPLIT * R, BLOCK_N)), axis=0)
    else:
        if PDL:
            tl.extra.cuda.gdc_wait()
        acc = tl.zeros((R, BLOCK_N), dtype=tl.float32)
        for i in range(BLOCKS_PER_SPLIT):
            k0 = (pid_k * BLOCKS_PER_SPLIT + i) * BLOCK_K
            acc = _gemv_block(
                acc, x_row, w_ptr, z_ptr, s_ptr, k0, offs_r, offs_n, mask_n, N, GROUP, MAGIC, ASM, PAIRED
            )
        out = tl.sum(acc, axis=0)
    count = count_ptr + row * tl.num_programs(0) + pid_n
    _store_output(
        out, y_ptr + row * stride_ym + offs_n, ws_ptr + row * N + offs_n, count, mask_n, SPLIT_K, FIXUP
    )


@triton.jit
def _awq_dequantize_kernel(
    w_ptr,
    z_ptr,
    s_ptr,
    out_ptr,
    N,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PAIRED: tl.constexpr,
    BY_WORD: tl.constexpr,
):
    """W^T rows [pid_k BLOCK_K, +BLOCK_K) (inside one group), columns [pid_n BLOCK_N, +BLOCK_N). BY_WORD:
    each word loaded once and spread over its 8 rows, zero and scale once per column (else each row
    loads its word, and each element its zero and scale: repeats served by L1)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n[None, :] < N
    if BY_WORD:
        offs_r = pid_k * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
        words = tl.load(w_ptr + offs_r[:, None] * N + offs_n[None, :], mask=mask_n, other=0)
        nibbles = (words[:, None, :] >> (_nibble(tl.arange(0, 8), PAIRED) * 4)[None, :, None]) & 0xF
        codes = tl.reshape(nibbles, (BLOCK_K, BLOCK_N)).to(tl.float32)  # row 8r + j: code j of word r
        g = pid_k * BLOCK_K // GROUP * N + offs_n
        z = tl.load(z_ptr + g, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        s = tl.load(s_ptr + g, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    else:
        packed = tl.load(w_ptr + (offs_k // 8)[:, None] * N + offs_n[None, :], mask=mask_n, other=0)
        codes = ((packed >> (_nibble(offs_k % 8, PAIRED) * 4)[:, None]) & 0xF).to(tl.float32)
        g = (offs_k // GROUP)[:, None] * N + offs_n[None, :]
        z = tl.load(z_ptr + g, mask=mask_n, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + g, mask=mask_n, other=0.0).to(tl.float32)
    out = (codes - z) * s
    tl.store(out_ptr + offs_k[:, None] * N + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask_n)


@dataclass(frozen=True)
class MatmulConfig:
    block_m: int  # 1 selects the CUDA-core kernel (one program row per activation row)
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3
    # load each packed word once and unroll its 8 rows in registers (else: each row loads its word,
    # the repeats served by L1 / shared memory)
    by_word: bool = False
    # codes to floats by exponent bits, not conversions (_code_pairs); the tensor-core
    # path does it for fp16 activations only
    magic: bool = False
    # split K summed in one launch (_store_output): no zeroed fp32 output before the kernel and no
    # cast after it, two launches fewer per linear. On for one row (300-call stress tests on the
    # H200, none wrong). Off for the tensor-core tiles: on an H200 at the 67B gate_up shape, 4 and 8
    # rows in the 16-row tile came out wrong in 25 and 98 of 100 calls (16 rows: none), valid rows of
    # one tile near zero, the scratch left clean, with or without a fence in every thread: not the
    # memory order of the sum; cause not found (benchmarks/awq_one.py --check describes a miss)
    fixup: bool = False
    # tensor-core path, fp16 activations: codes to fp16 two at a time by exponent bits, kept in the
    # order they come (x loaded in that order), instead of one at a time
    pairs: bool = False
    # with pairs: the tile dequantized in fp16 ((c - z) * s) and summed by the dot itself, instead of
    # raw codes with zero and scale applied to each K block's partial product
    scaled: bool = False
    # one-row kernel with magic: a program's K blocks loaded as one tensor, all loads in flight at once
    # (its blocks per program must be a power of two)
    whole_split: bool = False
    # one-row kernel, whole split, fp16 x: products in packed fp16 (_word_dots_f16x2), 23 instructions
    # per word in all against 42 for magic's fp32 products (sm_90 SASS, the default tile), and fewer
    # registers, which let a program hold 256 columns' codes in flight
    half2: bool = False
    # tensor-core tile with pairs and scaled: y^T = W x^T, the dequantized weights as the dot's first
    # operand (Hopper's wgmma takes that one from registers; the second must be in shared memory)
    swap: bool = False
    # one-row kernel, fp16 x on paired words: each program walks its share of K a unit of block_k
    # (one group or part of one) at a time, loading `depth` units ahead of the one it computes
    # (tameshi.kernels.awq_gemv); num_warps must be block_n / 128 (4 columns a thread, all rows)
    stream: bool = False
    depth: int = 1
    # one-row kernel, fp16 x on paired words: the products on tensor cores, one mma.sync a word a
    # thread (tameshi.kernels.awq_mma); block_k 32, block_n 64 a warp, `depth` blocks loaded ahead
    mma: bool = False
    # one-row kernel on paired words (fp16 or bf16 x): x quantized to int16 first, the products
    # integers by dp2a (tameshi.kernels.awq_x16); the streamed kernel's grid, units and depth
    x16: bool = False


def default_config(
    m: int, n: int, k: int, group: int, stream: bool = False, x16: bool = False
) -> MatmulConfig:
    """Tiles by row count, from the sweeps in benchmarks/awq_kernels.py on an H100 and an H200
    (67B shapes; benchmarks/results/awq-sweep-*.md).

    Decode streams every weight once, so the speed is memory parallelism: K is split so that each
    program handles only a few blocks and thousands of programs have loads in flight at once; the
    partial sums meet in fp32 atomics. One row: CUDA cores, 256 columns and two blocks of K (32 KB
    of codes) per program, each word loaded once, products in packed fp16, x in 16-byte loads (H200,
    67B shapes, against 64 columns with fp32 products and x loaded two codes at a time: gate_up 80.4
    -> 51.5 µs, 56% -> 88% of the copy bandwidth; benchmarks/results/awq-sweep-h200.md). More rows:
    the tensor-core dot on a tile of fp16 weights (below); 2-8 rows of fp16 x on paired words, the
    tensor-core one-row kernel (rows_config). One row where `x16` (awq_matmul: bf16 x, or x the
    streamed kernel cannot read): x in int16 and integer products (awq_x16.x16_config).
    """
    if m == 1 and x16:
        from tameshi.kernels.awq_x16 import x16_config  # it imports this module

        return x16_config(n, k, group)
    block_k = next(b for b in (128, 64, 32, 16) if group % b == 0)
    n_blocks = k // block_k
    if m == 1 and stream and group % 16 == 0:
        return stream_config(n, k, group)
    if m == 1:
        # 256 columns and two blocks of K (one where the count is odd) per program, four warps
        split = n_blocks // 2 if n_blocks % 2 == 0 else n_blocks
        return MatmulConfig(
            1, 256, block_k, split, num_warps=4, by_word=True, magic=True, whole_split=True, fixup=True,
            half2=True,
        )  # fmt: skip
    if m <= 8 and stream and k % 32 == 0 and group % 32 == 0:
        return rows_config(k, group)  # tensor cores, all rows in one program
    if block_k < 64:  # groups of 32 or less: Triton 3.6-3.9 fail to compile the pairs tile 32 x 32
        if m <= 16:
            return MatmulConfig(16, 128, block_k, _split(n_blocks, per_program=1), num_warps=8)
        split = 2 if n // 64 < 150 and n_blocks % 2 == 0 else 1
        return MatmulConfig(64, 64, block_k, split, num_warps=4, by_word=True, magic=True)
    # 2-64 rows: a tile of fp16 weights, dequantized two codes at a time (pairs, scaled; by_word and
    # magic are bf16 activations' fallback), computed as y^T = W x^T (swap) so that Hopper's wgmma
    # takes the weights from registers. H200 sweep at the 67B shapes against the tiles before swap
    # (benchmarks/results/awq-sweep-h200.md): at 4 rows qkv 51.6 -> 32.7 µs and gate_up 199 -> 114,
    # at 64 rows 71.0 -> 53.0 and 206 -> 161. 64 columns (wgmma's least M); up to 16 rows, a 16-row
    # tile with 8 blocks of K per program (or the nearest divisor); up to 64, a 64-row tile and K
    # split by the least divisor that gives 300 programs or more, with two pipeline stages where
    # that split is 4 or more (the sweep's best at o and down, split 4: 51.7 -> 41.3 and 109 -> 88
    # µs against three) and three below (its best at qkv, split 2, and gate_up, unsplit).
    block_n = 64
    if m <= 16:
        return MatmulConfig(
            16, block_n, block_k, _split(n_blocks, per_program=8), num_warps=4, num_stages=3,
            pairs=True, scaled=True, swap=True,
        )  # fmt: skip
    tiles = -(-n // block_n)
    split = next((d for d in range(1, n_blocks + 1) if n_blocks % d == 0 and tiles * d >= 300), n_blocks)
    return MatmulConfig(
        64, block_n, block_k, split, num_warps=4, num_stages=2 if split >= 4 else 3,
        by_word=True, magic=True, pairs=True, scaled=True, swap=True,
    )  # fmt: skip


def stream_config(n: int, k: int, group: int) -> MatmulConfig:
    """The streamed one-row tile (MatmulConfig.stream, for fp16 x on paired words): 512 columns (four
    warps), units of 64 of K (or of the group, where smaller) loaded one ahead, four units a program,
    or two where four leave under 600 programs (or do not divide K), split K the rest. H200, 67B shapes, against the one-row
    kernel (benchmarks/results/awq-stream-h200.md): qkv 16.1 -> 15.0 µs, o 14.0 -> 13.1, gate_up
    53.9 -> 50.2, down 30.0 -> 27.9; each within 2% of the best of the 63 tiles timed there."""
    block_k = next(b for b in (64, 32, 16) if group % b == 0)
    units = k // block_k
    programs_at_four = -(-n // 512) * units // 4
    per_program = 4 if units % 4 == 0 and programs_at_four >= 600 else 2 if units % 2 == 0 else 1
    return MatmulConfig(
        1, 512, block_k, units // per_program, num_warps=4, by_word=True, magic=True, fixup=True, stream=True,
    )  # fmt: skip


def rows_config(k: int, group: int) -> MatmulConfig:
    """The tensor-core one-row kernel's 8-row tile (MatmulConfig.mma, block_m 8) for 2-8 rows of fp16
    x on paired words: 128 columns (two warps), 16 blocks of 32 of K a program (or the most that
    divide K and fit the group), two loaded ahead. H200, 67B shapes, against the 16-row tensor-core
    tile before it (benchmarks/results/awq-mma-rows-h200.md), qkv / o / gate_up / down in µs: 2 rows
    32.0 / 26.6 / 113.3 / 64.4 -> 18.2 / 16.6 / 62.7 / 35.5; 4 rows 32.0 / 26.9 / 113.1 / 64.8 ->
    19.9 / 18.1 / 67.8 / 37.8; 8 rows 32.5 / 27.2 / 114.6 / 65.7 -> 24.2 / 21.2 / 79.6 / 44.3. Of
    the 33 tiles timed there, the one within 15% of each shape's best at every row count (the
    misses are at o, whose best tiles lose 40% at qkv)."""
    blocks_in_k, group_blocks = k // 32, max(1, group // 32)
    blocks = next(
        b
        for b in (16, 8, 4, 2, 1)
        if blocks_in_k % b == 0 and (b % group_blocks == 0 or group_blocks % b == 0)
    )
    return MatmulConfig(8, 128, 32, blocks_in_k // blocks, 2, 1, fixup=True, mma=True, depth=2)


def invariant_config(m: int, n: int, k: int, group: int, dtype: torch.dtype) -> MatmulConfig:
    """The batch-invariant tile for m rows: each row's sums taken in one order whatever m is, so a
    row's result does not depend on the rows beside it (EngineConfig.batch_invariant).

    Every m gets the tensor-core tile with the same K blocks and the same split, which depend on the
    layer's shape only. In the fp16 swapped tile the rows are the dot's N dimension, which decides
    how many columns a tensor-core instruction computes, not how one column's products are summed:
    the tile's rows (16, 64, 128) follow m and cost nothing in invariance (tests/test_gpu.py checks
    it bit for bit). Elsewhere the rows are the dot's M, and the tile is 64 rows for every m. Split
    K is 1 or 2: two partial sums added to zero in float32 atomics give the same bits in either
    order, more would not."""
    base = default_config(64, n, k, group)  # the 64-row tile's blocks
    n_blocks = k // base.block_k
    split = 2 if n_blocks % 2 == 0 and -(-n // base.block_n) * 2 <= 600 else 1
    swap = base.swap and dtype == torch.float16
    block_m = (16 if m <= 16 else 64 if m <= 64 else 128) if swap else 64
    return MatmulConfig(
        block_m, base.block_n, base.block_k, split, num_warps=base.num_warps, num_stages=3,
        by_word=base.by_word, magic=base.magic, pairs=base.pairs, scaled=base.scaled, swap=base.swap,
    )  # fmt: skip


def _split(n_blocks: int, per_program: int) -> int:
    """The split of n_blocks K blocks whose blocks per program is nearest `per_program` (it must divide)."""
    divisors = [d for d in range(1, n_blocks + 1) if n_blocks % d == 0]
    return min(divisors, key=lambda d: (abs(n_blocks // d - per_program), d))


def awq_matmul(
    x: torch.Tensor,
    packed: KPacked,
    config: MatmulConfig | None = None,
    out_dtype: torch.dtype | None = None,
    x_q: QuantizedX | None = None,
) -> torch.Tensor:
    """y = x @ dequantize(W^T) for x [M, K] in fp16/bf16; y [M, N] in `out_dtype` (x's by default;
    float32 keeps the kernel's accumulator unrounded). `x_q`: x already quantized for the dp2a kernel
    (an awq_x16.QuantizedX in blocks of awq_x16.x16_unit(group), written by the kernel that wrote x):
    one row then runs on that kernel with no quantize_x before it, for fp16 x too."""
    m, k = x.shape
    kw, n = packed.shape
    if kw != k:
        raise ValueError(f"weight is [{kw}, {n}] (K, N) but x is [{m}, {k}]")
    x = x.contiguous()
    stream = x.dtype == torch.float16 and packed.paired and stream_fits(x)
    # one row: fp16 x the streamed kernel reads -> it, unless x comes quantized (x_q); else (bf16, x
    # off 16 bytes) the dp2a kernel after quantize_x, where it fits (awq_x16 says why)
    x16 = m == 1 and x16_default(packed)
    if not x16:
        x_q = None
    use_x16 = x16 and (x_q is not None or not stream)
    cfg = config or default_config(m, n, k, packed.group, stream, use_x16)
    if cfg.mma and not _mma_fits(x, packed):
        cfg = default_config(m, n, k, packed.group)  # the kernels that read any alignment
    min_k = 16 if cfg.block_m > 1 else 8  # the tensor-core dot's least K
    if packed.group % cfg.block_k or k % (cfg.block_k * cfg.split_k) or cfg.block_k % min_k:
        raise ValueError(f"block_k {cfg.block_k} must divide the group {packed.group}; block_k·split_k K {k}")
    out_dtype = out_dtype or x.dtype
    fixup = cfg.split_k > 1 and cfg.fixup
    if cfg.split_k == 1 or fixup:
        y = torch.empty(m, n, dtype=out_dtype, device=x.device)
    else:
        y = torch.zeros(m, n, dtype=torch.float32, device=x.device)
    tiles = triton.cdiv(n, cfg.block_n) * triton.cdiv(m, cfg.block_m)
    ws, counts = split_k_scratch(x.device, m * n, tiles) if fixup else (y, y)
    launch(x, packed, cfg, y, ws, counts, x_q)
    return y.to(out_dtype)


def x16_default(packed: KPacked) -> bool:
    """May awq_matmul run one row on the dp2a kernel (awq_x16) for this weight? Where the kernel
    reads it (paired words, a fitting group), unless TAMESHI_AWQ_X16=0."""
    from tameshi.kernels.awq_x16 import x16_fits  # it imports this module

    return os.environ.get("TAMESHI_AWQ_X16", "1") != "0" and x16_fits(
        packed.shape[1], packed.group, packed.paired
    )


def launch(
    x: torch.Tensor,
    packed: KPacked,
    cfg: MatmulConfig,
    y: torch.Tensor,
    ws: torch.Tensor,
    counts: torch.Tensor,
    x_q: QuantizedX | None = None,
) -> None:
    """awq_matmul's kernel on buffers it was given: y [M, N] (float32 and zeroed for split K's
    atomics), and for split K in one launch the zeroed workspace (float32, [M, N] contiguous) and
    tile counters. `x_q`: a dp2a tile's x, quantized already (awq_matmul's)."""
    if cfg.x16:
        from tameshi.kernels.awq_x16 import launch_x16  # it imports this module

        return launch_x16(x, packed, cfg, y, ws, counts, x_q)
    m, k = x.shape
    n = packed.shape[1]
    with_pdl = pdl(x.device)
    if cfg.stream and not stream_fits(x):
        cfg = dataclasses.replace(cfg, stream=False)  # the default one-row kernel, same blocks
    if cfg.mma and not _mma_fits(x, packed):  # awq_matmul picks another tile before its buffers
        raise ValueError("the tensor-core one-row kernel needs fp16 x and paired words, 16-byte aligned")
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m), cfg.split_k)
    kernel, consts = kernel_constants(cfg, k, packed.group, x.dtype, packed.paired, with_pdl, n)
    sizes = (m, n) if "M" in kernel.arg_names else (n,)
    if consts.get("HALF2") and packed.paired and (x.data_ptr() % 4 or x.stride(0) % 2):
        consts["HALF2"] = False  # it reads paired words' x as int32 words
    if kernel is not _awq_matmul_kernel and with_pdl:
        consts["launch_pdl"] = True
    kernel[grid](
        x, packed.qweight, packed.zeros, packed.scales, y, ws, counts, *sizes, x.stride(0), y.stride(0),
        **consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip


def _mma_fits(x: torch.Tensor, packed: KPacked) -> bool:
    from tameshi.kernels.awq_mma import mma_fits  # it imports this module

    return mma_fits(x, packed)


def stream_fits(x: torch.Tensor) -> bool:
    """Can the streamed one-row kernel read x? It loads 16 bytes of x (fp16) at a time."""
    return x.data_ptr() % 16 == 0 and (x.shape[0] == 1 or x.stride(0) % 8 == 0)


def kernel_constants(
    cfg: MatmulConfig,
    k: int,
    group: int,
    dtype: torch.dtype,
    paired: bool = False,
    with_pdl: bool = False,
    n: int | None = None,
) -> tuple:
    """The kernel that runs `cfg` and its compile-time constants (also for compiling it ahead, in tests).
    `with_pdl`: launched with programmatic dependent launch (the one-row kernels take it). `n`, where
    known, lets the streamed kernel drop its column masks."""
    if cfg.x16:
        from tameshi.kernels.awq_x16 import _awq_gemv_x16_kernel, x16_constants  # it imports this module

        return _awq_gemv_x16_kernel, x16_constants(cfg, k, group, with_pdl, n)
    fixup = cfg.split_k > 1 and cfg.fixup
    blocks = k // cfg.block_k // cfg.split_k  # per program
    asm = not interpreted()
    if cfg.mma and paired and dtype == torch.float16:
        from tameshi.kernels.awq_mma import BLOCK, _awq_gemv_mma_kernel, program_ptx  # it imports this module

        group_blocks = group // BLOCK
        if (
            cfg.block_k != BLOCK
            or cfg.block_n != 64 * cfg.num_warps
            or cfg.block_m not in (1, 8)
            or (blocks % group_blocks and group_blocks % blocks)
            or cfg.depth < 1
        ):
            raise ValueError(
                "a tensor-core one-row tile needs block_k 32, 64 columns a warp, 1 or 8 rows, whole groups"
                f" or part of one a program: {cfg}"
            )
        rows = 1 if cfg.block_m == 1 else 2  # sums a lane: one row, or two of up to 8
        ptx = program_ptx(blocks, group_blocks, cfg.depth, with_pdl, rows) if asm else ""
        consts = dict(
            GROUP=group, BLOCK_N=cfg.block_n, BLOCKS=blocks, SPLIT_K=cfg.split_k, DEPTH=cfg.depth, ROWS=rows,
            FIXUP=fixup, ASM=asm, PTX=ptx, PDL=with_pdl,
        )  # fmt: skip
        return _awq_gemv_mma_kernel, consts
    if cfg.block_m == 1 and cfg.stream and paired and dtype == torch.float16:
        from tameshi.kernels.awq_gemv import _awq_gemv_stream_kernel  # it imports this module

        if (
            cfg.num_warps * 128 != cfg.block_n
            or cfg.depth not in (1, 2)
            or blocks < cfg.depth
            or cfg.block_k not in (16, 32, 64, 128)
        ):
            raise ValueError(
                f"a streamed one-row tile needs 128 columns a warp, depth 1 or 2 (and as many units a program), block_k 16-128: {cfg}"
            )
        consts = dict(
            GROUP=group, BLOCK_N=cfg.block_n, RU=cfg.block_k // 8, UNITS=blocks, SPLIT_K=cfg.split_k,
            DEPTH=cfg.depth, FIXUP=fixup, EVEN=n is not None and n % cfg.block_n == 0, ASM=asm, PDL=with_pdl,
        )  # fmt: skip
        return _awq_gemv_stream_kernel, consts
    if cfg.block_m == 1 and cfg.by_word:
        return _awq_gemv_kernel, dict(
            GROUP=group, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
            BLOCKS_PER_SPLIT=blocks, MAGIC=cfg.magic, ASM=asm, FIXUP=fixup,
            WHOLE=cfg.whole_split and cfg.magic and blocks & (blocks - 1) == 0,  # tl.arange needs a power of two
            PAIRED=paired, PDL=with_pdl, HALF2=cfg.half2 and dtype == torch.float16,
        )  # fmt: skip
    fp16 = dtype == torch.float16
    return _awq_matmul_kernel, dict(
        GROUP=group, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        SPLIT_K=cfg.split_k, BLOCKS_PER_SPLIT=blocks, USE_DOT=cfg.block_m > 1,
        DOT_FP32=dtype == torch.bfloat16 and interpreted(), BY_WORD=cfg.by_word,
        MAGIC=cfg.magic and cfg.block_m > 1 and fp16, FIXUP=fixup,
        PAIRS=cfg.pairs and cfg.block_m > 1 and fp16, SCALED=cfg.scaled, ASM=asm, PAIRED=paired,
        SWAP=cfg.swap and cfg.pairs and cfg.scaled and cfg.block_m > 1 and fp16,
    )  # fmt: skip


# Per device: the split-K workspace (float32) and tile counters of MatmulConfig.fixup, all zero
# between kernels (each kernel's last split per tile zeroes what it used). Kernels on one stream run
# one after another, so one scratch serves every layer; it only grows. A grown-out scratch is kept:
# CUDA graphs captured before may still point at it.
_scratch: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
_outgrown: list[tuple[torch.Tensor, torch.Tensor]] = []


def split_k_scratch(device: torch.device, values: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The zeroed workspace (>= `values` floats) and counters (>= `tiles`) on `device`."""
    ws, counts = _scratch.get(device, (None, None))
    if ws is None or ws.numel() < values or counts.numel() < tiles:
        values = max(values, ws.numel() if ws is not None else 0)
        tiles = max(tiles, counts.numel() if counts is not None else 0)
        if ws is not None:
            _outgrown.append((ws, counts))
        ws = torch.zeros(values, dtype=torch.float32, device=device)
        counts = torch.zeros(tiles, dtype=torch.int32, device=device)
        _scratch[device] = (ws, counts)
    return ws, counts


def awq_dequantize(packed: KPacked, dtype: torch.dtype, by_word: bool = False) -> torch.Tensor:
    """W^T [K, N] in `dtype`: (q - z) * s computed in fp32, rounded once. `by_word`: each packed word
    loaded once (_awq_dequantize_kernel)."""
    k, n = packed.shape
    # by word: rows of one group, whole words; else any 32 rows (each row finds its own group)
    block_k = next(b for b in (64, 32, 16, 8) if packed.group % b == 0) if by_word else min(packed.group, 32)
    out = torch.empty(k, n, dtype=dtype, device=packed.qweight.device)
    grid = (triton.cdiv(n, 128), k // block_k)
    _awq_dequantize_kernel[grid](
        packed.qweight, packed.zeros, packed.scales, out, n,
        GROUP=packed.group, BLOCK_N=128, BLOCK_K=block_k, PAIRED=packed.paired, BY_WORD=by_word,
    )  # fmt: skip
    return out
