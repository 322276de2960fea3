"""The dp2a one-row AWQ kernel's split-K sum in fixed point against its fp32 sum, at DeepSeek-LLM-67B's
shapes on one GPU (issue 4, check 5):

    python benchmarks/awq_fixed_sum.py

The fp32 sum (awq_triton._store_output) adds each split's part into a float workspace, then a fence,
a counter's atomic and, for the split that ends a tile, a load of the sum: three trips to L2 at the
end of each program, where removing the sum altogether made o 1.2 µs faster (awq-prefetch-slab-h200.md).
The fixed-point sum (awq_triton._store_fixed) is one 64-bit atomic a column, value and count in one
word, and gives the same y in any order. Both on x16_config's tile, x quantized beforehand; alone
(a CUDA graph over weight copies larger than L2) and, at qkv and o, as added after the kernels that
come before them in a layer (awq_kernels.layer_before); and how many distinct y 20 calls give.
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import torch
import triton

from tameshi.kernels.awq_triton import kdequantize_reference, split_k_scratch
from tameshi.kernels.awq_x16 import launch_x16, quantize_x, x16_config


def main() -> None:
    from awq_kernels import (
        GROUP,
        SHAPES,
        copy_bandwidth,
        graph_ms,
        layer_before,
        make_layer,
        packed_bytes,
        random_awq,
        weight_copies,
    )

    copy_gbs = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    print(f"copy bandwidth {copy_gbs:.0f} GB/s (read + write of 1 GiB)\n")
    print(
        "| shape | split-K sum | alone µs | added in a layer µs | max error / max abs(y) | distinct y in 20 calls |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, (k, n) in SHAPES.items():
        layers = [make_layer(k, n, *random_awq(k, n)) for _ in range(weight_copies(k, n))]
        packs = [layer.kernel_weight for layer in layers]
        weight = packed_bytes(packs[0])
        cfg = x16_config(n, k, GROUP)
        in_layer = name.startswith(("qkv", "o "))
        producer, _ = layer_before(name, k, 128) if in_layer else (None, "")
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        x[0, 7] = 40.0
        ref = x.float() @ kdequantize_reference(packs[0])
        prepared = quantize_x(x, 128)
        y = torch.empty(1, n, dtype=torch.float16, device="cuda")
        ws32, counts = split_k_scratch(x.device, n, n // 16)
        ws64 = torch.zeros(2 * n, dtype=torch.float32, device="cuda")
        chain = range(2 * len(packs))
        base = graph_ms([lambda i=i: producer(i) for i in chain], 50) if in_layer else 0.0

        def cell(ms: float) -> str:
            return f"{ms * 1000:.2f} ({100 * weight / ms / 1e6 / copy_gbs:.0f}%)"

        for _ in range(2):  # twice: the order of the two is not what the figures say
            for fixed in (False, True):
                ws = ws64 if fixed else ws32

                def call(p, xq=prepared):
                    launch_x16(x, p, cfg, y, ws, counts, xq, fixed=fixed)

                call(packs[0])
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                outs = set()
                for _ in range(20):
                    call(packs[0])
                    outs.add(y.cpu().numpy().tobytes())
                alone = graph_ms([lambda p=p: call(p) for p in packs], 50)
                added = ""
                if in_layer:

                    def step(i):
                        _, x_q = producer(i)
                        call(packs[i % len(packs)], x_q)

                    added = cell(graph_ms([lambda i=i: step(i) for i in chain], 50) - base)
                label = "fixed point, one 64-bit atomic" if fixed else "fp32 atomics, fence, counter"
                print(f"| {name} | {label} | {cell(alone)} | {added} | {err:.1e} | {len(outs)} |", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
