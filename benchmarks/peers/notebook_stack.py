"""The notebook stack on a checkpoint: transformers + AutoAWQ's Triton GEMM, `model.generate`.

This is what people ran before tameshi (transformers 4.47 + AutoAWQ 0.2.7, no compiled awq_ext, so
AutoAWQ's WQLinear_GEMM falls back to its Triton kernels). Install those from wheels into their own
folder and put it first on PYTHONPATH (benchmarks/run_h100.sh does):

    pip install --no-deps --target /tmp/peer transformers==4.47.1 tokenizers==0.21.0 \
        huggingface_hub==0.27.1 autoawq==0.2.7.post3 accelerate==1.2.1
    PYTHONPATH=/tmp/peer python benchmarks/peers/notebook_stack.py CKPT --json out.json

Measures what `tameshi bench` measures at batch 1: TTFT for a prompt, and decode tokens/s after the
first token (greedy, EOS ignored). Random prompt ids, as in tameshi bench.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import sys
import time
import types

import torch


def timed_generate(model, ids: torch.Tensor, new_tokens: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, pad_token_id=0,
    )  # fmt: skip
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--ttft-prompt-len", type=int, default=1024)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    # AutoAWQ imports `datasets` for its calibration loader, which inference never calls; a stand-in
    # keeps datasets' ~100 MB of dependencies off the benchmark machine.
    if "datasets" not in sys.modules:
        stand_in = types.ModuleType("datasets")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
        stand_in.load_dataset = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no datasets here"))
        sys.modules["datasets"] = stand_in
    import awq
    import transformers
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        args.checkpoint, torch_dtype=torch.float16, device_map="cuda"
    )
    load_s = time.perf_counter() - start
    kinds = {type(m).__name__ for m in model.modules()}
    print(f"transformers {transformers.__version__}, autoawq {awq.__version__}; layers: {sorted(kinds)[:8]}")
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def prompt(n: int) -> torch.Tensor:
        return torch.randint(100, min(vocab, 30000), (1, n), generator=gen).cuda()

    timed_generate(model, prompt(16), 2)  # warm up (Triton compiles)
    ttft = sorted(timed_generate(model, prompt(args.ttft_prompt_len), 1) for _ in range(3))[1]
    ids = prompt(args.prompt_len)
    first = timed_generate(model, ids, 1)
    total = timed_generate(model, ids, args.gen_len)
    decode_tps = (args.gen_len - 1) / (total - first)
    result = {
        "stack": f"transformers {transformers.__version__} + AutoAWQ {awq.__version__}",
        "load_s": load_s, "ttft_s": ttft, "decode_tps": decode_tps, "prompt_len": args.prompt_len,
        "gen_len": args.gen_len, "ttft_prompt_len": args.ttft_prompt_len,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
