"""How fast the one-row AWQ kernel could be on its own access pattern: a kernel that loads the same
[rows, columns] tiles of packed codes over the same grid and does nothing else, beside the kernel
itself, at the 67B qkv, o and gate_up shapes (python benchmarks/awq_load_ceiling.py), with and
without programmatic dependent launch (the one-row kernel launches with it).

What is left between the two is the kernel's arithmetic and its split-K sum; what is left between
the loads alone and the copy bandwidth is the access pattern's (each call's ramp and tail). Times
are per call inside a CUDA graph over copies of the weight larger than L2 together, as in
benchmarks/awq_kernels.py.
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import dataclasses
import itertools

import torch
import triton
import triton.language as tl
from awq_kernels import copy_bandwidth, graph_ms, random_awq, weight_copies

from tameshi.kernels.awq_triton import awq_matmul, default_config, kpack

GROUP = 128
SHAPES = {"qkv 8192→10240": (8192, 10240), "o 8192→8192": (8192, 8192), "gate_up 8192→44032": (8192, 44032)}
# columns, K blocks (16 word rows each) per program, warps
LOAD_TILES = [(256, 2, 4), (256, 1, 2), (256, 1, 1), (128, 1, 1), (512, 1, 4), (64, 4, 2), (1024, 1, 8)]


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _loads_only(w_ptr, y_ptr, N, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, PDL: tl.constexpr = False):
    """Load a [ROWS, BLOCK_N] tile of words and keep it alive (a store no value takes). PDL: as the
    one-row kernel launches (programmatic dependent launch): the next call may start loading while
    this one's last programs finish, and waits for them only before its store."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.program_id(2) * ROWS + tl.arange(0, ROWS)
    words = tl.load(w_ptr + offs_r[:, None] * N + offs_n[None, :])
    if PDL:
        tl.extra.cuda.gdc_wait()
    folded = tl.reduce(words, 0, _xor)
    tl.store(y_ptr + offs_n, folded, mask=folded == 0x12345678)


def main() -> None:
    copy_gbs = copy_bandwidth()
    print(f"copy bandwidth {copy_gbs:.0f} GB/s (read + write of 1 GiB)\n")
    print("| shape | kernel | µs | GB/s | % of copy |\n|---|---|---:|---:|---:|")
    for name, (k, n) in SHAPES.items():
        packs = [kpack(*random_awq(k, n), GROUP, paired=True) for _ in range(weight_copies(k, n))]
        codes = packs[0].qweight.numel() * 4
        with_zs = codes + packs[0].zeros.numel() * 2 + packs[0].scales.numel() * 2
        y = torch.empty(n, dtype=torch.int32, device="cuda")
        for (block_n, blocks, warps), with_pdl in itertools.product(LOAD_TILES, (False, True)):
            grid = (triton.cdiv(n, block_n), 1, k // GROUP // blocks)
            ms = graph_ms([
                lambda p=p: _loads_only[grid](
                    p.qweight, y, n, BLOCK_N=block_n, ROWS=16 * blocks, PDL=with_pdl, num_warps=warps,
                    launch_pdl=with_pdl,
                )
                for p in packs
            ])  # fmt: skip
            gbs = codes / ms / 1e6
            label = f"loads only: {block_n} columns, {blocks} K blocks, {warps} warps" + (
                ", PDL" if with_pdl else ""
            )
            print(
                f"| {name} | {label} | {ms * 1000:.1f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% |",
                flush=True,
            )
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        cfg = default_config(1, n, k, GROUP)
        for label, c in (
            ("AWQ kernel, default", cfg),
            ("AWQ kernel, one warp", dataclasses.replace(cfg, num_warps=1)),
        ):
            ms = graph_ms([lambda p=p, c=c: awq_matmul(x, p, c) for p in packs])
            gbs = with_zs / ms / 1e6
            print(
                f"| {name} | {label} | {ms * 1000:.1f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% |",
                flush=True,
            )
        del packs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
