"""Two tries at the dp2a one-row kernel's (tameshi.kernels.awq_x16) tail at DeepSeek-LLM-67B's shapes,
and what its split-K sum and arithmetic cost (issue 4, check 5), on one GPU:

    python benchmarks/awq_l2_prefetch.py

- L2 prefetch: before griddepcontrol.wait each program asks L2 for its later units (one
  `cp.async.bulk.prefetch.L2` a row of the tile, or `prefetch.global.L2` a 128-byte line), so that
  its loads after the wait find them there; `pf` units of the program's, all of them at 16.
- Ablations of the same kernel: no split-K sum (each split stores its part: y is wrong, the time is
  what the sum costs), and "cheap" arithmetic (an xor of the words instead of the dp2a products:
  what the arithmetic costs).
Times per call inside a CUDA graph over weight copies larger than L2 together, with PDL, as in
benchmarks/awq_kernels.py; x quantized beforehand (quantize_x not counted).
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import torch
import triton
import triton.language as tl
from awq_kernels import GROUP, SHAPES, OneRowCase, graph_ms, print_run_header, random_awq, weight_copies

from tameshi.kernels.awq_gemv import stream_units
from tameshi.kernels.awq_triton import _store_output, kpack, split_k_scratch
from tameshi.kernels.awq_x16 import _unit_sums, x16_config

_BULK = tl.constexpr("cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0;")
_LINE = tl.constexpr("prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;")


@triton.jit
def _cheap_sums(
    acc, words_a, words_b, z, s, q_row, xs_row, xsum_row, unit, RU: tl.constexpr, ASM: tl.constexpr
):
    """stream_units' SUMS without the products: the words folded by an xor (keeps their loads)."""
    return acc + tl.sum(words_a ^ words_b, axis=0).to(tl.float32) * s.to(tl.float32)


@triton.jit
def _x16_tries(
    q_ptr, xs_ptr, xsum_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, N, K, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, RU: tl.constexpr, UNITS: tl.constexpr,
    SPLIT_K: tl.constexpr, DEPTH: tl.constexpr, FIXUP: tl.constexpr, PF: tl.constexpr,
    PFN: tl.constexpr, PFZ: tl.constexpr, LINES: tl.constexpr, CHEAP: tl.constexpr,
):  # fmt: skip
    """awq_x16._awq_gemv_x16_kernel (PDL on, columns unmasked) with PF units prefetched to L2 first."""
    tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(2)
    first = pid_k * UNITS
    if PF > 0:  # rows of units first + DEPTH .. first + DEPTH + PF (PFN: PF's next power of two)
        rows = (first + DEPTH) * RU + tl.minimum(tl.arange(0, PFN * RU), PF * RU - 1)
        at = w_ptr + rows.to(tl.int64) * N + pid_n * BLOCK_N
        if LINES:
            lines = at[:, None] + tl.arange(0, BLOCK_N // 32)[None, :] * 32
            tl.inline_asm_elementwise(_LINE, "=r,l", [lines], dtype=tl.int32, is_pure=False, pack=1)
        else:
            size = tl.full(rows.shape, BLOCK_N * 4, tl.int32)
            tl.inline_asm_elementwise(_BULK, "=r,l,r", [at, size], dtype=tl.int32, is_pure=False, pack=1)
        if PFZ:  # the units' zeros and scales too
            g = (first + DEPTH + tl.minimum(tl.arange(0, PFN), PF - 1)) * (
                8 * RU
            ) // GROUP * N + pid_n * BLOCK_N
            size = tl.full(g.shape, BLOCK_N * 2, tl.int32)
            tl.inline_asm_elementwise(
                _BULK, "=r,l,r", [z_ptr + g, size], dtype=tl.int32, is_pure=False, pack=1
            )
            tl.inline_asm_elementwise(
                _BULK, "=r,l,r", [s_ptr + g, size], dtype=tl.int32, is_pure=False, pack=1
            )
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    xs_row = xs_ptr
    xsum_row = xsum_ptr
    if CHEAP:
        acc = stream_units(
            w_ptr, z_ptr, s_ptr, first, offs_n, mask_n, N, q_ptr, xs_row, xsum_row, RU, GROUP, UNITS, DEPTH,
            True, True, _cheap_sums, True,
        )  # fmt: skip
    else:
        acc = stream_units(
            w_ptr, z_ptr, s_ptr, first, offs_n, mask_n, N, q_ptr, xs_row, xsum_row, RU, GROUP, UNITS, DEPTH,
            True, True, _unit_sums, True,
        )  # fmt: skip
    _store_output(acc, y_ptr + offs_n, ws_ptr + offs_n, count_ptr + pid_n, mask_n, SPLIT_K, FIXUP)


def launch(
    prepared, packed, y, ws, counts, per, depth=1, pf=0, pfz=False, lines=False, cheap=False, nosum=False
):
    """One call of _x16_tries on 256 columns, units of 128 of K, `per` units a program."""
    q, scales, sums = prepared
    k, n = packed.shape
    split = k // 128 // per
    pf = min(pf, per - depth)
    return _x16_tries[(n // 256, 1, split)](
        q, scales, sums, packed.qweight, packed.zeros, packed.scales, y, ws, counts, n, k, y.stride(0),
        GROUP=packed.group, BLOCK_N=256, RU=16, UNITS=per, SPLIT_K=1 if nosum else split, DEPTH=depth,
        FIXUP=split > 1 and not nosum, PF=pf, PFN=triton.next_power_of_2(max(pf, 1)), PFZ=pfz and pf > 0,
        LINES=lines, CHEAP=cheap, num_warps=2, num_stages=1, launch_pdl=True,
    )  # fmt: skip


def main() -> None:
    copy_gbs = print_run_header()
    print(OneRowCase.HEADER)
    for name, (k, n) in SHAPES.items():
        packs = [kpack(*random_awq(k, n), GROUP, paired=True) for _ in range(weight_copies(k, n))]
        case = OneRowCase(name, packs, copy_gbs)
        x, prepared, y, row, error = case.x, case.prepared, case.y, case.row, case.error
        ws, counts = split_k_scratch(x.device, n, n // 128)

        per = k // 128 // x16_config(n, k, GROUP).split_k
        case.x16_baseline(packs, f"awq_x16 as x16_config picks ({per} units a program)", replays=30)
        tries = [dict(per=per), dict(per=per, pf=2), dict(per=per, pf=16), dict(per=per, pf=16, pfz=True),
                 dict(per=per, pf=16, lines=True), dict(per=per, pf=16, depth=2), dict(per=2 * per),
                 dict(per=2 * per, pf=2), dict(per=2 * per, pf=16), dict(per=per, nosum=True),
                 dict(per=per, cheap=True), dict(per=per, cheap=True, pf=16), dict(per=per, nosum=True, cheap=True)]  # fmt: skip
        for t in tries:
            if (k // 128) % t["per"]:
                continue
            launch(prepared, packs[0], y, ws, counts, **t)
            kernel = launch(prepared, packs[0], y, ws, counts, **t)  # twice: counters and workspace back at 0
            err = error()
            ms = graph_ms([lambda p=p: launch(prepared, p, y, ws, counts, **t) for p in packs], 30)
            ws.zero_()
            counts.zero_()  # "no sum" leaves them as they were; the others set them back
            label = ", ".join(f"{key} {value}" for key, value in t.items())
            row(label, ms, f"{kernel.n_regs}", None if t.get("nosum") or t.get("cheap") else err)
        del packs, case
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
