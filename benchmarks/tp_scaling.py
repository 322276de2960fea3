"""Tensor parallel against one GPU, same model, same run: speed at each --tp, and whether tp=N's greedy
tokens are tp=1's.

    python benchmarks/tp_scaling.py MODEL [--tp 1 2] [--dtype float16] [--exact-dtype float32] [--md F]

For each tp (the first one is the reference): `tameshi bench`'s measurements (TTFT, batch-1 decode,
aggregate at --concurrency, weight bandwidth against the GPU's own copy bandwidth) and the greedy
tokens of a few fixed prompts, compared with the reference's. In half precision a different summation
order (the all-reduce adds float32 partial sums; cuBLAS picks other kernels for a rank's narrower
matrices) can flip a near tie of random weights' flat logits, so the table gives the tokens equal before
the first difference, and there the reference's top-2 margin and whether tp=N took its second choice; `--exact-dtype float32` loads the model
again in float32 at each tp, where no half-precision rounding hides behind the order, and its tokens
must be equal outright.

"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import sys
import time

import torch

from tameshi import LLM, SamplingParams
from tameshi.bench import common_prefix, parting, random_prompt, run_bench
from tameshi.engine.engine import EngineConfig


def _greedy(llm: LLM, prompts: list[list[int]], gen_len: int) -> tuple[list[list[int]], list[list]]:
    """Each prompt's greedy tokens, and at every token the top two (id, logprob)."""
    params = SamplingParams(
        max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False, ignore_eos=True, logprobs=2
    ).resolve({})
    tokens: list[list[int]] = [[] for _ in prompts]
    tops: list[list] = [[] for _ in prompts]
    for i, out in llm.engine.generate_batch([(p, params) for p in prompts]):
        tokens[i] += out.token_ids
        tops[i] += [lp.top for lp in out.logprobs or []]
    return tokens, tops


def _partings(tokens: list[list[int]], want: list[list[int]], want_tops: list[list]) -> list[str]:
    """Where a prompt's tokens part from the reference's: the reference's top-2 margin there, and
    whether this run took the reference's second choice (a near tie, not a wrong shard)."""
    notes = []
    for got, ref, top in zip(tokens, want, want_tops, strict=True):
        where = parting(got, ref, top)
        if where is not None:
            at, margin, second = where
            notes.append(
                f"at {at}: margin {margin:.3g} nats, took {'its 2nd choice' if second else 'another token'}"
            )
    return notes


def _load(model: str, dtype: str, tp: int, max_num_seqs: int) -> tuple[LLM, float]:
    start = time.perf_counter()
    llm = LLM(
        model,
        dtype=dtype,
        tp=tp,
        progress=False,
        engine_config=EngineConfig(max_num_seqs=max_num_seqs, gpu_memory_utilization=0.6),
    )
    return llm, time.perf_counter() - start


def _collect() -> None:
    """After the last reference to an LLM is gone: give its GPU memory back before the next load."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        left = torch.cuda.memory_allocated() / 2**30
        print(f"  GPU memory still allocated: {left:.2f} GiB", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--exact-dtype", default=None, help="Also compare greedy tokens at this dtype.")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--ttft-prompt-len", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--check-prompts", type=int, default=4, help="Fixed prompts whose greedy tokens are compared."
    )
    ap.add_argument("--check-len", type=int, default=32, help="Tokens generated per compared prompt.")
    ap.add_argument("--md", default=None, help="Also write the Markdown table here.")
    ap.add_argument("--json", default=None, help="Also write the raw results here.")
    args = ap.parse_args(argv)

    rows, want, want_tops, exact_want = [], None, None, None
    for tp in args.tp:
        print(f"== tp={tp}, {args.dtype}", file=sys.stderr, flush=True)
        llm, load_s = _load(args.model, args.dtype, tp, max(args.concurrency, args.check_prompts))
        rng = random.Random(1)
        prompts = [random_prompt(llm.loaded.config.vocab_size, 32, rng) for _ in range(args.check_prompts)]
        tokens, tops = _greedy(llm, prompts, args.check_len)
        steps = "CUDA graphs" if llm.engine.runner.graphs is not None else "eager"
        result = run_bench(
            llm, args.model, prompt_len=args.prompt_len, gen_len=args.gen_len,
            ttft_prompt_len=args.ttft_prompt_len, concurrency=args.concurrency, solo_checks=0, load_s=load_s,
            say=lambda text: print(f"  {text}", file=sys.stderr, flush=True),
        )  # fmt: skip
        llm.close()
        del llm
        _collect()
        if want is None:
            want, want_tops = tokens, tops
        row = dataclasses.asdict(result) | {
            "decode_steps": steps,
            "weight_gbps": result.weight_gbps, "bandwidth_share": result.bandwidth_share,
            "equal_prefix": [common_prefix(t, w) for t, w in zip(tokens, want, strict=True)],
            "partings": _partings(tokens, want, want_tops),
        }  # fmt: skip
        if args.exact_dtype:
            exact = tokens
            if args.exact_dtype != args.dtype:
                print(f"== tp={tp}, {args.exact_dtype} (token check)", file=sys.stderr, flush=True)
                llm, _ = _load(args.model, args.exact_dtype, tp, args.check_prompts)
                exact, _ = _greedy(llm, prompts, args.check_len)
                llm.close()
                del llm
                _collect()
            exact_want = exact if exact_want is None else exact_want
            row["exact_equal"] = sum(e == w for e, w in zip(exact, exact_want, strict=True))
        rows.append(row)

    base = rows[0]
    head = ["tp", "decode steps", "load s", "TTFT ms", "decode tok/s (batch 1)", f"aggregate tok/s ({args.concurrency})",
            "weights/GPU GB", "% of copy BW", "speed-up", f"greedy = tp {args.tp[0]} ({args.dtype})"]  # fmt: skip
    if args.exact_dtype:
        head.append(f"greedy = tp {args.tp[0]} ({args.exact_dtype})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["tp"]), r["decode_steps"], f"{r['load_s']:.1f}", f"{r['ttft_s'] * 1000:.0f}", f"{r['decode_tps']:.1f}",
            f"{r['aggregate_tps']:.0f}", f"{r['weight_gb']:.2f}", f"{100 * r['bandwidth_share']:.0f}%",
            f"{r['decode_tps'] / base['decode_tps']:.2f}x",
            f"prefixes {', '.join(map(str, r['equal_prefix']))} of {args.check_len}"
            + "".join(f" ({note})" for note in r["partings"]),
        ]  # fmt: skip
        if args.exact_dtype:
            cells.append(f"{r['exact_equal']}/{args.check_prompts} prompts equal")
        lines.append("| " + " | ".join(cells) + " |")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    table = "\n".join(
        [f"{args.model} on {gpu}, {args.dtype}; prompt {args.prompt_len}, {args.gen_len} generated, "
         f"TTFT at {args.ttft_prompt_len}; copy bandwidth {base['copy_gbps']:.0f} GB/s per GPU", "", *lines]
    )  # fmt: skip
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    main()
