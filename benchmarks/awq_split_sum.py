"""What the split-K sum and programmatic dependent launch cost the one-row AWQ kernels, at the
DeepSeek-LLM-67B shapes (python benchmarks/awq_split_sum.py [--out FILE.md]).

Each one-row tile splits K over programs (thousands of them keep the loads in flight) and sums the
parts. Three ways of ending a program, timed on the same tile:
- one launch (MatmulConfig.fixup, what AWQLinear runs): parts added in an fp32 workspace, a counter
  per column tile, the last part writes y and zeroes the workspace;
- fp32 atomics into y alone (y zeroed once, outside the timing; the cast a real call needs is not
  timed);
- plain stores of each part (a wrong y: what the kernel costs with no sum at all).
Each with and without PDL. Per call inside a CUDA graph over copies of the weight larger than L2,
as benchmarks/awq_kernels.py times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
from awq_kernels import GROUP, SHAPES, copy_bandwidth, emit, graph_ms, random_awq, weight_copies

from tameshi.kernels.awq_triton import MatmulConfig, kernel_constants, kpack, split_k_scratch, stream_config

# the best tensor-core one-row tile of benchmarks/results/awq-one-row-mma-h200.md at each shape
MMA_BEST = {
    "qkv 8192→10240": MatmulConfig(1, 256, 32, 16, 4, 1, fixup=True, mma=True, depth=4),
    "o 8192→8192": MatmulConfig(1, 256, 32, 64, 4, 1, fixup=True, mma=True, depth=2),
    "gate_up 8192→44032": MatmulConfig(1, 128, 32, 32, 2, 1, fixup=True, mma=True, depth=1),
    "down 22016→8192": MatmulConfig(1, 256, 32, 43, 4, 1, fixup=True, mma=True, depth=4),
}
ENDS = ("one launch", "fp32 atomics", "plain stores")


def call(x, packed, cfg: MatmulConfig, end: str, with_pdl: bool):
    """A closure launching cfg's kernel with the given end on its own buffers."""
    k, n = packed.shape
    kernel, consts = kernel_constants(cfg, k, GROUP, x.dtype, True, with_pdl, n)
    if end != "one launch":
        consts["FIXUP"] = False
    if end == "plain stores":
        consts["SPLIT_K"] = 1
    if with_pdl:
        consts["launch_pdl"] = True
    y = torch.zeros(1, n, dtype=torch.float16 if end != "fp32 atomics" else torch.float32, device="cuda")
    ws, counts = split_k_scratch(x.device, n, triton.cdiv(n, cfg.block_n))
    grid = (triton.cdiv(n, cfg.block_n), 1, cfg.split_k)

    sizes = (1, n) if "M" in kernel.arg_names else (n,)  # the tensor-core kernel takes M too

    def run():
        kernel[grid](
            x, packed.qweight, packed.zeros, packed.scales, y, ws, counts, *sizes, x.stride(0), y.stride(0),
            **consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    copy_gbs = copy_bandwidth()
    lines = [
        "# The one-row AWQ kernels' split-K sum and PDL, M = 1, 67B shapes, group 128",
        "",
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}. "
        f"Copy bandwidth {copy_gbs:.0f} GB/s. µs per call in a CUDA graph over weight copies beyond L2.",
        "",
        "| shape | tile | end | PDL | µs | % of copy |",
        "|---|---|---|---|---:|---:|",
    ]
    for name, (k, n) in SHAPES.items():
        packs = [kpack(*random_awq(k, n), GROUP, paired=True) for _ in range(weight_copies(k, n))]
        first = packs[0]
        weight_bytes = sum(t.numel() * t.element_size() for t in (first.qweight, first.zeros, first.scales))
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        for label, cfg in (
            ("streamed (AWQLinear's)", stream_config(n, k, GROUP)),
            ("tensor cores", MMA_BEST[name]),
        ):
            for end in ENDS:
                for with_pdl in (True, False):
                    ms = graph_ms([call(x, p, cfg, end, with_pdl) for p in packs])
                    pct = 100 * weight_bytes / ms / 1e6 / copy_gbs
                    line = f"| {name} | {label} | {end} | {'on' if with_pdl else 'off'} | {ms * 1000:.1f} | {pct:.0f}% |"
                    print(line, flush=True)
                    lines.append(line)
        packs.clear()
        torch.cuda.empty_cache()
    emit(lines, args.out)


if __name__ == "__main__":
    main()
