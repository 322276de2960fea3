"""The one-row AWQ kernels for fp16 x on paired words, the streamed one (MatmulConfig.stream,
tameshi.kernels.awq_gemv) and the tensor-core one (MatmulConfig.mma, tameshi.kernels.awq_mma),
against the one-row kernel before them (default_config without stream), at one row (decode), on
the DeepSeek-LLM-67B (or 7B) layer shapes, in one run.

    python benchmarks/awq_stream.py [--shapes 67b|7b] [--family stream|mma|both] [--rows M] [--out FILE.md]

With --rows 2-8 (a few sequences decoding together), the tensor-core one-row kernel's 8-row tiles
against what awq_matmul picks for that many rows (the 16-row tensor-core tile).

Every candidate tile of awq_gemv.stream_configs and awq_mma.mma_configs is compiled first, in parallel processes (Triton's
cache then serves the timing process), then timed per call inside a CUDA graph over copies of the
weight larger than L2 together, as benchmarks/awq_kernels.py times, and checked against the fp32
reference (max error over the largest output). The table gives each shape's best tiles, the one-row
kernel, awq_matmul's own pick, and the run's own copy bandwidth: issue 4 asks >= 85% of it at M = 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
from awq_kernels import GROUP, SHAPES, SHAPES_7B, copy_bandwidth, emit, graph_ms, random_awq, weight_copies

from tameshi.kernels.awq_gemv import stream_configs
from tameshi.kernels.awq_mma import mma_configs
from tameshi.kernels.awq_triton import MatmulConfig, awq_matmul, default_config, kdequantize_reference, kpack

FAMILIES = {"stream": [stream_configs], "mma": [mma_configs], "both": [stream_configs, mma_configs]}


def candidates(k: int, family: str, rows: int = 1) -> list[MatmulConfig]:
    if rows > 1:  # only the tensor-core kernel takes more than one row a program
        return mma_configs(k, GROUP, block_m=8)
    return [cfg for configs in FAMILIES[family] for cfg in configs(k, GROUP)]


def describe(cfg: MatmulConfig, k: int) -> str:
    units = k // cfg.block_k // cfg.split_k
    if cfg.mma:
        return f"tensor cores{' (8 rows)' if cfg.block_m == 8 else ''}: {cfg.block_n} cols, {units} blocks of 32, depth {cfg.depth}, split {cfg.split_k}"
    return f"{cfg.block_n} cols, {cfg.block_k // 8} rows a unit, {units} units, depth {cfg.depth}, split {cfg.split_k}"


def compile_shape(job: tuple[int, int, int, list[MatmulConfig]]) -> list[str]:
    """Run each tile once on a weight of the shape (in a worker process): compiles it into the cache."""
    k, n, rows, configs = job
    packed = kpack(*random_awq(k, n), GROUP, paired=True)
    x = torch.randn(rows, k, device="cuda", dtype=torch.float16)
    failed = []
    for cfg in configs:
        try:
            awq_matmul(x, packed, cfg)
            torch.cuda.synchronize()
        except Exception as e:  # reported, then left out of the timing
            failed.append(f"{describe(cfg, k)}: {str(e).splitlines()[0][:160]}")
    return failed


def compile_all(shapes: dict[str, tuple[int, int]], family: str, rows: int, workers: int = 12) -> None:
    """Every tile at every K, in parallel; those that fail to compile or run are printed."""
    jobs = []
    for k in sorted({k for k, _ in shapes.values()}):
        n = next(n for kk, n in shapes.values() if kk == k)
        configs = candidates(k, family, rows)
        jobs += [(k, n, rows, configs[i::workers]) for i in range(workers) if configs[i::workers]]
    start = time.time()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        failures = [line for lines in pool.map(compile_shape, jobs) for line in lines]
    print(f"compiled {sum(len(j[3]) for j in jobs)} tiles in {time.time() - start:.0f} s", flush=True)
    for line in failures:
        print("failed:", line, flush=True)


def bench_shape(
    name: str, k: int, n: int, copy_gbs: float, top: int, family: str, rows: int = 1
) -> tuple[list[str], str]:
    packs = [kpack(*random_awq(k, n), GROUP, paired=True) for _ in range(weight_copies(k, n))]
    first = packs[0]
    weight_bytes = sum(t.numel() * t.element_size() for t in (first.qweight, first.zeros, first.scales))
    x = torch.randn(rows, k, device="cuda", dtype=torch.float16)
    ref = x.float() @ kdequantize_reference(first)
    scale = ref.abs().max().item()

    def timed(cfg: MatmulConfig | None, packs=packs) -> tuple[float, float]:
        err = max((awq_matmul(x, first, cfg).float() - ref).abs().max().item() / scale for _ in range(2))
        return graph_ms([lambda p=p: awq_matmul(x, p, cfg) for p in packs]), err

    default_ms, default_err = timed(default_config(rows, n, k, GROUP))  # the one-row kernel, not streamed
    chosen_ms, chosen_err = timed(None)  # what awq_matmul picks: default_config's streamed tile
    results = []
    for cfg in candidates(k, family, rows):
        try:
            ms, err = timed(cfg)
        except Exception as e:  # a tile that did not compile was reported already
            print(f"{name}: {describe(cfg, k)} failed: {str(e).splitlines()[0][:120]}", flush=True)
            torch.cuda.synchronize()
            continue
        results.append((ms, err, cfg))
    results.sort(key=lambda r: r[0])

    def row(label: str, ms: float, err: float) -> str:
        gbs = weight_bytes / ms / 1e6
        return (
            f"| {name} | {label} | {ms * 1000:.1f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% "
            f"| {default_ms / ms:.2f}× | {err:.1e} |"
        )

    baseline = "one-row kernel" if rows == 1 else f"{rows}-row default tile"
    lines = [row(baseline, default_ms, default_err), row("awq_matmul's pick", chosen_ms, chosen_err)]
    lines += [row(describe(cfg, k), ms, err) for ms, err, cfg in results[:top]]
    for line in lines:
        print(line, flush=True)
    best_ms, _, best = results[0] if results else (float("nan"), float("nan"), None)
    floor_us = weight_bytes / copy_gbs / 1e3
    summary = (
        f"| {name} | {floor_us:.1f} | {default_ms * 1000:.1f} | {chosen_ms * 1000:.1f} | {best_ms * 1000:.1f} "
        f"| {100 * floor_us / (best_ms * 1000):.0f}% | {describe(best, k) if best else '-'} |"
    )
    packs.clear()
    torch.cuda.empty_cache()
    return lines, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", choices=["67b", "7b"], default="67b")
    ap.add_argument("--top", type=int, default=8, help="tiles per shape in the table")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="both", help="candidate tiles timed")
    ap.add_argument(
        "--rows", type=int, default=1, help="rows of x (2-8: the tensor-core kernel's 8-row tiles)"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    shapes = SHAPES_7B if args.shapes == "7b" else SHAPES
    compile_all(shapes, args.family, args.rows)
    copy_gbs = copy_bandwidth()
    lines = [
        f"# One-row AWQ kernels ({args.family if args.rows == 1 else 'mma, 8-row tiles'}) vs the default, "
        f"M = {args.rows}, {args.shapes.upper()} shapes, group {GROUP}",
        "",
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}. "
        f"Measured copy bandwidth: **{copy_gbs:.0f} GB/s** (read + write of 1 GiB). µs per call inside a "
        "CUDA graph over copies of the weight larger than L2; GB/s of codes, zeros and scales.",
        "",
        "| shape | kernel | µs | GB/s | % of copy | baseline / this | max error |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    summaries = []
    for name, (k, n) in shapes.items():
        table, summary = bench_shape(name, k, n, copy_gbs, args.top, args.family, args.rows)
        lines += table
        summaries.append(summary)
    lines += [
        "",
        "| shape | floor µs (bytes / copy bandwidth) | one-row µs | awq_matmul's pick µs | best candidate µs "
        "| best, % of copy | best tile |",
        "|---|---:|---:|---:|---:|---:|---|",
        *summaries,
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
