"""One AWQ matmul shape, called a few times with AWQLinear's own kernel choice: a target for a
profiler (`ncu -k regex:awq python benchmarks/awq_one.py --m 1 --k 8192 --n 44032`).

    python benchmarks/awq_one.py [--m 1] [--k 8192] [--n 44032] [--calls 3] [--set fixup=1 ...]

With --check, every call's result is held to the fp32 reference, and the calls that miss are counted:
a race (split K's one-launch sum) shows up as a rare miss.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from tameshi.kernels.awq_triton import awq_matmul, default_config, kdequantize_reference, kpack

GROUP = 128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--n", type=int, default=44032)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--set", nargs="*", default=[], help="MatmulConfig fields to override: name=int")
    ap.add_argument("--check", action="store_true", help="hold each call to the reference")
    ap.add_argument(
        "--paired", action="store_true", help="the paired nibble order (KPacked.paired, as AWQLinear)"
    )
    args = ap.parse_args()
    k, n = args.k, args.n
    qweight = torch.randint(-(2**31), 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda")
    qzeros = torch.randint(-(2**31), 2**31 - 1, (k // GROUP, n // 8), dtype=torch.int32, device="cuda")
    scales = (torch.rand(k // GROUP, n, device="cuda") * 0.01 + 0.001).half()
    packed = kpack(qweight, qzeros, scales, GROUP, paired=args.paired)
    cfg = default_config(args.m, n, k, GROUP, stream=args.paired)  # as awq_matmul picks for fp16 x
    cfg = dataclasses.replace(cfg, **{key: int(v) for key, v in (t.split("=") for t in args.set)})
    x = torch.randn(args.m, k, device="cuda", dtype=torch.float16)
    ref = x.float() @ kdequantize_reference(packed) if args.check else None
    misses, worst = 0, 0.0
    for _ in range(args.calls):
        y = awq_matmul(x, packed, cfg)
        if ref is not None:
            err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
            worst = max(worst, err)
            misses += err > 2e-3
            if err > 2e-3 and misses <= 3:
                describe_miss(y.float(), ref, misses)
    torch.cuda.synchronize()
    print(f"M={args.m} K={k} N={n}: {cfg}")
    if ref is not None:
        print(
            f"{misses} of {args.calls} calls off the reference by > 2e-3 of its largest value; worst {worst:.2e}"
        )


def describe_miss(y: torch.Tensor, ref: torch.Tensor, miss: int) -> None:
    """Where a call went wrong: its rows and columns, how far off, and what the one-launch sum left
    behind in its scratch (all zero after a right call)."""
    from tameshi.kernels.awq_triton import _scratch

    bad = (y - ref).abs() > 2e-3 * ref.abs().max()
    rows = bad.any(1).nonzero().flatten().tolist()
    cols = bad.any(0).nonzero().flatten()
    ratio = (y[bad] / ref[bad]).float()
    ws, counts = _scratch.get(y.device, (None, None))
    left = (
        ""
        if ws is None
        else f"; scratch left nonzero: {int((ws != 0).sum())} values, {int((counts != 0).sum())} counters"
    )
    print(
        f"miss {miss}: {int(bad.sum())} values wrong, rows {rows}, columns {cols.min().item()}..{cols.max().item()}"
        f" ({cols.numel()}), y/ref median {ratio.median().item():.3f}{left}"
    )


if __name__ == "__main__":
    main()
