"""Would a persistent one-row AWQ kernel get closer to the copy bandwidth? (issue 4, check 5)

    python benchmarks/awq_persistent.py

The one-row kernel (MatmulConfig.half2) launches one program per (column block, K split): at the
67B qkv and o shapes that is 1,000-1,300 programs in 2-3 waves, and each call pays its waves' ramps
and tails. Here the same arithmetic runs in a fixed number of programs (a few per SM) that loop over
those units, Triton's pipeliner loading the next unit's words while the current one is summed. Beside
it, at the same shapes: a kernel that only loads the same units the same way (the ceiling of the
access pattern), and the default one-row kernel. Times per call inside a CUDA graph over copies of
the weight larger than L2 together (as benchmarks/awq_kernels.py); the persistent kernel's output is
checked against the default's.

Result on an H200 (benchmarks/results/awq-persistent-h200.md): no; the persistent kernel matches the
default's times at best. Its loads alone, persistent and pipelined, reach 78-82% of the copy bandwidth
at the o and qkv shapes; launched with PDL, the non-persistent loads alone reach 91-96%
(awq-load-ceiling-h200.md).
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl
from awq_kernels import copy_bandwidth, graph_ms, random_awq, weight_copies

from tameshi.kernels.awq_triton import _store_output, _word_dots_f16x2, awq_matmul, kpack, split_k_scratch

GROUP = 128
SHAPES = {"qkv 8192→10240": (8192, 10240), "o 8192→8192": (8192, 8192),
          "gate_up 8192→44032": (8192, 44032), "down 22016→8192": (22016, 8192)}  # fmt: skip


@triton.jit
def _gemv_persistent(
    x_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, N,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCKS: tl.constexpr,
):  # fmt: skip
    """_awq_gemv_kernel's whole-split HALF2 path on paired words, one row, looping over units."""
    tl.extra.cuda.gdc_launch_dependents()
    R: tl.constexpr = BLOCK_K // 8
    n_col = tl.cdiv(N, BLOCK_N)
    offs_b = tl.arange(0, BLOCKS)
    for unit in range(tl.program_id(0), n_col * SPLIT_K, tl.num_programs(0)):
        pid_n = unit % n_col
        pid_k = unit // n_col
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        kb = pid_k * BLOCKS + offs_b
        rows_a = (kb * R)[:, None, None] + 2 * tl.arange(0, R // 2)[None, :, None]
        w_a = w_ptr + rows_a * N + offs_n[None, None, :]
        words_a = tl.load(w_a, mask=mask_n[None, None, :], other=0)
        words_b = tl.load(w_a + N, mask=mask_n[None, None, :], other=0)
        g = (kb * BLOCK_K // GROUP)[:, None] * N + offs_n[None, :]
        z = tl.load(z_ptr + g, mask=mask_n[None, :], other=0.0)
        sc = tl.load(s_ptr + g, mask=mask_n[None, :], other=0.0).to(tl.float32)
        tl.extra.cuda.gdc_wait()  # PDL: the first unit's weights load before it; later, returns at once
        dots = _word_dots_f16x2(words_a, words_b, z[:, None, :], x_ptr + rows_a * 8, True, True)
        out = tl.sum(tl.sum(dots, axis=1) * sc, axis=0)
        # The barrier in this split-K sum keeps Triton from pipelining the loop (num_stages changes
        # nothing; a sum without the barrier pipelines, but a counter per column to replace it raced).
        _store_output(out, y_ptr + offs_n, ws_ptr + offs_n, count_ptr + pid_n, mask_n, SPLIT_K, True)


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _loads_persistent(
    w_ptr, y_ptr, N, K_ROWS, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, STAGES: tl.constexpr
):
    """The same units' words loaded and folded, nothing else (a store no value takes)."""
    n_col = tl.cdiv(N, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for unit in tl.range(tl.program_id(0), n_col * (K_ROWS // ROWS), tl.num_programs(0), num_stages=STAGES):
        offs_n = (unit % n_col) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_r = (unit // n_col) * ROWS + tl.arange(0, ROWS)
        acc ^= tl.reduce(tl.load(w_ptr + offs_r[:, None] * N + offs_n[None, :]), 0, _xor)
    tl.store(y_ptr + tl.arange(0, BLOCK_N), acc, mask=acc == 0x12345678)


def main() -> None:
    copy_gbs = copy_bandwidth()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"copy bandwidth {copy_gbs:.0f} GB/s (read + write of 1 GiB), {sms} SMs\n")
    print("| shape | kernel | µs | GB/s | % of copy | max error vs default |\n|---|---|---:|---:|---:|---:|")
    for name, (k, n) in SHAPES.items():
        packs = [kpack(*random_awq(k, n), GROUP, paired=True) for _ in range(weight_copies(k, n))]
        weight = sum(
            t.numel() * t.element_size() for t in (packs[0].qweight, packs[0].zeros, packs[0].scales)
        )

        def row(label: str, ms: float, err: str = "") -> None:
            gbs = weight / ms / 1e6
            print(
                f"| {name} | {label} | {ms * 1000:.1f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {err} |",
                flush=True,
            )

        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        row("one-row kernel, default", graph_ms([lambda p=p: awq_matmul(x, p) for p in packs]))
        ref = awq_matmul(x, packs[0]).float()
        y = torch.empty(1, n, dtype=torch.float16, device="cuda")
        folded = torch.empty(1024, dtype=torch.int32, device="cuda")
        best = (float("inf"), "")
        for block_n, blocks, per_sm in itertools.product((256, 128), (1, 2), (2, 4)):
            split = k // 128 // blocks
            ws, counts = split_k_scratch(x.device, n, triton.cdiv(n, block_n))
            grid = (sms * per_sm,)

            def call(p, block_n=block_n, blocks=blocks, split=split, grid=grid):
                _gemv_persistent[grid](
                    x, p.qweight, p.zeros, p.scales, y, ws, counts, n, GROUP=GROUP, BLOCK_N=block_n,
                    BLOCK_K=128, SPLIT_K=split, BLOCKS=blocks, num_warps=4, launch_pdl=True,
                )  # fmt: skip

            label = f"persistent: {block_n} columns, {blocks} K blocks a unit, {per_sm} programs/SM"
            call(packs[0])
            err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
            call(packs[0])  # again: the counters and workspace were left at zero
            err = max(err, ((y.float() - ref).abs().max() / ref.abs().max()).item())
            ms = graph_ms([lambda p=p, call=call: call(p) for p in packs])
            row(label, ms, f"{err:.1e}")
            best = min(best, (ms, label))
        row("best persistent: " + best[1].removeprefix("persistent: "), best[0])
        for block_n, rows, per_sm, stages in itertools.product((256,), (16, 32), (2, 4), (3,)):
            grid = (sms * per_sm,)
            ms = graph_ms([
                lambda p=p, grid=grid, block_n=block_n, rows=rows, stages=stages: _loads_persistent[grid](
                    p.qweight, folded, n, k // 8, BLOCK_N=block_n, ROWS=rows, STAGES=stages, num_warps=4
                )
                for p in packs
            ])  # fmt: skip
            row(
                f"loads only, persistent: {block_n} columns, {rows} word rows, {per_sm}/SM, {stages} stages",
                ms,
            )
        del packs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
