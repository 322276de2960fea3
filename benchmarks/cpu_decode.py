"""Decode speed on the embedded default (SmolLM2-135M-Instruct GGUF), CPU, batch 1, greedy.

tameshi, transformers (loading the same GGUF) and llama-cpp-python (if installed) in one run,
printed side by side with ratios. Run: python benchmarks/cpu_decode.py [--tokens 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import torch

PROMPT = "Write a short story about a robot who learns to paint."


def bench_tameshi(n_tokens: int, repeat: int, quantize: str | None = None) -> float:
    from tameshi import LLM, SamplingParams

    torch.manual_seed(0)
    llm = LLM(progress=False, quantize=quantize)
    ids = llm.encode_chat([{"role": "user", "content": PROMPT}])
    params = llm.sampling_params(SamplingParams(max_new_tokens=n_tokens, do_sample=False, ignore_eos=True))
    best = 0.0
    for _ in range(repeat):
        stream = llm.engine.stream(ids, params)
        next(stream)  # the prefill and first token are not decode
        t0 = time.perf_counter()
        n = sum(1 for _ in stream)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def bench_transformers(n_tokens: int, repeat: int) -> float | None:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        return None
    from tameshi.loading.default import default_gguf_path

    path = default_gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )

    def run(n: int) -> float:
        t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t0

    best = 0.0
    for _ in range(repeat):
        prefill = run(1)  # subtract prefill + first token, to time decode alone
        best = max(best, (n_tokens - 1) / (run(n_tokens) - prefill))
    return best


def bench_llama_cpp(n_tokens: int, repeat: int) -> float | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from tameshi.loading.default import default_gguf_path

    llm = Llama(
        model_path=str(default_gguf_path()), n_ctx=1024, n_threads=torch.get_num_threads(), verbose=False
    )
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True)
    best = 0.0
    for _ in range(repeat):
        llm.reset()
        llm.eval(tokens)
        token = llm.sample(temp=0.0)
        t0 = time.perf_counter()
        for _ in range(n_tokens - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0)
        best = max(best, (n_tokens - 1) / (time.perf_counter() - t0))
    return best


def _isolated(fn, *args) -> float | str | None:
    """Run a peer in its own process: a crash in native code reports, not kills, the benchmark."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result(timeout=1800)
        except Exception as e:  # BrokenProcessPool when llama.cpp dies of SIGSEGV, say
            return f"failed: {type(e).__name__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    results = {
        "tameshi (fp32, exact)": bench_tameshi(args.tokens, args.repeat),
        "tameshi --quantize int8": bench_tameshi(args.tokens, args.repeat, "int8"),
        "tameshi --quantize int4": bench_tameshi(args.tokens, args.repeat, "int4"),
        "transformers": bench_transformers(args.tokens, args.repeat),
        "llama-cpp-python": _isolated(bench_llama_cpp, args.tokens, args.repeat),
    }
    base = results["transformers"]
    print(
        f"\nCPU decode, batch 1, {args.tokens} tokens, {torch.get_num_threads()} threads, best of {args.repeat}"
    )
    ours = {k: v for k, v in results.items() if k.startswith("tameshi")}
    print("| engine | tokens/s | vs transformers | " + " | ".join(f"{k} vs it" for k in ours) + " |")
    print("|---|---:|---:|" + "---:|" * len(ours))
    for name, tps in results.items():
        if tps is None or isinstance(tps, str):
            print(f"| {name} | {tps or 'not installed'} | |" + " |" * len(ours))
            continue
        vs_hf = f"{tps / base:.2f}×" if base else "–"
        print(
            f"| {name} | {tps:.1f} | {vs_hf} | " + " | ".join(f"{v / tps:.2f}×" for v in ours.values()) + " |"
        )


if __name__ == "__main__":
    main()
