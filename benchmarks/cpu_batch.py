"""Batched vs one-at-a-time generation on the embedded default, CPU, greedy, in one run.

32 chat prompts of mixed length, each generating --tokens new tokens: first through the batching
engine together, then one after another. Run: python benchmarks/cpu_batch.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from tameshi import LLM, SamplingParams

TOPICS = ["the sea", "Mount Fuji", "a robot", "tea", "autumn", "trains", "cats", "the moon", "東京", "桜"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--quantize", default=None, help="int4 or int8 (CPU weight-only modes)")
    args = ap.parse_args()
    llm = LLM(progress=False, quantize=args.quantize)
    rng = random.Random(0)
    prompts = [
        llm.encode_chat(
            [
                {
                    "role": "user",
                    "content": f"Write {rng.choice([1, 2, 5])} sentences about {rng.choice(TOPICS)}.",
                }
            ]
        )
        for _ in range(args.prompts)
    ]
    params = SamplingParams(max_new_tokens=args.tokens, do_sample=False, ignore_eos=True)

    t0 = time.perf_counter()
    batched = llm.generate(prompts, params)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [llm.generate(p, params) for p in prompts]
    t_single = time.perf_counter() - t0

    n = sum(c.completion_tokens for c in batched)
    same = sum(a.token_ids == b.token_ids for a, b in zip(batched, single, strict=True))
    stats = llm.engine.stats()
    print(
        f"\n{args.prompts} prompts × {args.tokens} new tokens, CPU, {torch.get_num_threads()} threads, "
        f"weights: {args.quantize or 'fp32'}; KV pool {stats.kv_blocks_total} blocks × {stats.block_size}"
    )
    print("| mode | wall s | tokens/s | vs one at a time |\n|---|---:|---:|---:|")
    print(f"| one at a time | {t_single:.1f} | {n / t_single:.1f} | 1.00× |")
    print(f"| batched (engine) | {t_batched:.1f} | {n / t_batched:.1f} | {t_single / t_batched:.2f}× |")
    print(f"greedy outputs identical batched vs alone: {same}/{args.prompts}")


if __name__ == "__main__":
    main()
