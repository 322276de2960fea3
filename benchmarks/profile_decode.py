"""Where a batch-1 decode step's time goes: GPU (one CUDA-graph replay) vs the whole engine step.

    python benchmarks/profile_decode.py CKPT [--tokens 64]

Prints the replay time alone, the engine's time per token, and the host functions that cost most
(cProfile), so host overhead shows up as the difference.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from tameshi import LLM
from tameshi.sampling_params import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    llm = LLM(args.checkpoint, progress=False)
    engine = llm.engine
    params = SamplingParams(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False).resolve(
        {}
    )
    prompt = list(range(1000, 1128))
    for _ in engine.stream(prompt, params):  # warm up: capture graphs, compile kernels
        pass
    graphs = engine.runner.graphs
    if graphs is not None:
        graph = graphs.graphs[1]
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(50):
            graph.replay()
        torch.cuda.synchronize()
        print(f"graph replay, batch 1: {(time.perf_counter() - start) / 50 * 1000:.3f} ms")
    torch.cuda.synchronize()
    start = time.perf_counter()
    n = sum(len(o.token_ids) for o in engine.stream(prompt, params))
    torch.cuda.synchronize()
    print(
        f"engine: {(time.perf_counter() - start) / n * 1000:.3f} ms per token ({n} tokens, prefill included)"
    )
    profile = cProfile.Profile()
    profile.enable()
    for _ in engine.stream(prompt, params):
        pass
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
