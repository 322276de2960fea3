"""The one-row AWQ kernel on integer products (tameshi.kernels.awq_x16) against AWQLinear's streamed
kernel, at DeepSeek-LLM-67B's shapes, on one GPU (issue 4, check 5: 85% of the copy bandwidth).

    python benchmarks/awq_x16.py [--quick]

For each tile (awq_x16.x16_configs) it times the dp2a kernel on x quantized beforehand, then the
three fastest and x16_config's pick again as awq_matmul runs them, x's quantization (quantize_x, a
second kernel) included; and it prints each kernel's largest error against the fp32 product of x
(with an outlier of 40) and the dequantized weight, over the largest |y|. Times per call
inside a CUDA graph over weight copies larger than L2 together, as in benchmarks/awq_kernels.py.
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import argparse

import torch
import triton
from awq_kernels import (
    GROUP,
    SHAPES,
    copy_bandwidth,
    graph_ms,
    random_awq,
    weight_copies,
)

from tameshi.kernels.awq_triton import (
    awq_matmul,
    kdequantize_reference,
    kpack,
    split_k_scratch,
    stream_config,
)
from tameshi.kernels.awq_x16 import launch_x16, quantize_x, x16_config, x16_configs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="four tiles, not all")
    parser.add_argument("--replays", type=int, default=10, help="graph replays a tile in the sweep")
    args = parser.parse_args()
    copy_gbs = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    print(f"copy bandwidth {copy_gbs:.0f} GB/s (read + write of 1 GiB)\n")
    print("| shape | kernel | µs | GB/s | % of copy | max error / max |y| |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (k, n) in SHAPES.items():
        packs = [kpack(*random_awq(k, n), GROUP, paired=True) for _ in range(weight_copies(k, n))]
        weight = sum(
            t.numel() * t.element_size() for t in (packs[0].qweight, packs[0].zeros, packs[0].scales)
        )

        def row(label: str, ms: float, err: float | None = None) -> None:
            gbs = weight / ms / 1e6
            e = "" if err is None else f"{err:.1e}"
            print(
                f"| {name} | {label} | {ms * 1000:.1f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {e} |",
                flush=True,
            )

        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        x[0, 7] = 40.0  # an outlier, as real activations have
        ref = x.float() @ kdequantize_reference(packs[0])
        top = ref.abs().max()

        def error(y: torch.Tensor, ref=ref, top=top) -> float:
            return ((y.float() - ref).abs().max() / top).item()

        streamed = stream_config(n, k, GROUP)
        row("the streamed kernel (AWQLinear's before)", graph_ms([lambda p=p: awq_matmul(x, p, streamed) for p in packs], 50),
            error(awq_matmul(x, packs[0], streamed)))  # fmt: skip
        for xb in (64, 128):
            row(f"quantize_x alone, blocks of {xb}", graph_ms([lambda: quantize_x(x, xb) for _ in packs]))
        y = torch.empty(1, n, dtype=torch.float16, device="cuda")
        timed = []
        configs = x16_configs(k, GROUP)
        if args.quick:
            configs = [c for c in configs if c.block_n == 256 and c.block_k == 128 and c.depth == 1]
        for cfg in configs:
            per = k // cfg.block_k // cfg.split_k
            label = f"dp2a: {cfg.block_n} columns, units of {cfg.block_k}, {per} a program, {cfg.depth} ahead"
            ws, counts = split_k_scratch(x.device, n, triton.cdiv(n, cfg.block_n))
            prepared = quantize_x(x, cfg.block_k)

            def call(p, cfg=cfg, prepared=prepared):
                launch_x16(x, p, cfg, y, ws, counts, prepared)

            call(packs[0])
            err = error(y)
            call(packs[0])  # again: the counters and workspace were left at zero
            err = max(err, error(y))
            ms = graph_ms([lambda p=p: call(p) for p in packs], replays=args.replays)
            row(label, ms, err)
            timed.append((ms, label, cfg))
        pick = x16_config(n, k, GROUP)
        for _, label, cfg in [*sorted(timed, key=lambda t: t[0])[:3], (0, "x16_config's pick", pick)]:
            # the best again, longer, as awq_matmul runs them (x quantized by quantize_x before)
            label = f"best {label}" if cfg != pick else label
            row(label, graph_ms([lambda p=p, cfg=cfg: awq_matmul(x, p, cfg) for p in packs], 50))
        del packs, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
