"""One AWQ matmul shape, called a few times with AWQLinear's own kernel choice: a target for a
profiler (`ncu -k regex:awq python benchmarks/awq_one.py --m 1 --k 8192 --n 44032`).

    python benchmarks/awq_one.py [--m 1] [--k 8192] [--n 44032] [--calls 3] [--magic]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from tameshi.kernels.awq_triton import awq_matmul, default_config, kpack

GROUP = 128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--n", type=int, default=44032)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument(
        "--magic", action=argparse.BooleanOptionalAction, default=None, help="override the default's"
    )
    args = ap.parse_args()
    k, n = args.k, args.n
    qweight = torch.randint(-(2**31), 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda")
    qzeros = torch.randint(-(2**31), 2**31 - 1, (k // GROUP, n // 8), dtype=torch.int32, device="cuda")
    scales = (torch.rand(k // GROUP, n, device="cuda") * 0.01 + 0.001).half()
    packed = kpack(qweight, qzeros, scales, GROUP)
    cfg = default_config(args.m, n, k, GROUP)
    if args.magic is not None:
        cfg = dataclasses.replace(cfg, magic=args.magic)
    x = torch.randn(args.m, k, device="cuda", dtype=torch.float16)
    for _ in range(args.calls):
        awq_matmul(x, packed, cfg)
    torch.cuda.synchronize()
    print(f"M={args.m} K={k} N={n}: {cfg}")


if __name__ == "__main__":
    main()
