"""Where a decode step's time goes: GPU kernels by kind, CUDA-graph replay against the whole engine
step, and the host functions that cost most.

    python benchmarks/profile_decode.py CKPT [--batch 1 [64 ...]] [--prompt-len 128] [--tokens 64] [--steps 20]

`--batch N` starts N requests of --prompt-len random tokens together, profiles the steps that prefill
them and then --steps decode steps of the N rows (torch.profiler, CUDA kernels grouped by kind: AWQ
matmuls, cuBLAS, paged attention, the fused norm/RoPE/SwiGLU kernels, sampling, copies). At batch 1 it
also times one graph replay alone and the engine per token, so host overhead shows up as the
difference, and prints cProfile's top host functions. CKPT may be `synth:PRESET[:awq]`.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import re
import time
from collections import defaultdict

import torch

from tameshi import LLM
from tameshi.bench import random_prompt
from tameshi.engine.engine import EngineConfig
from tameshi.sampling_params import SamplingParams

KINDS = [  # (kind, pattern on the kernel name), first match wins
    ("AWQ matmul", r"_awq_(matmul|gemv)"),
    ("AWQ dequantize", r"_awq_dequantize"),
    ("paged attention", r"paged|attention|attn|fmha|flash"),
    ("cuBLAS / GEMM", r"gemm|gemv|xmma|cutlass|cublas|sm\d\d_"),
    ("norm, RoPE, SwiGLU", r"rms|norm|rope|rotary|silu|swiglu"),
    ("all-reduce", r"nccl"),
    ("sampling", r"argmax|topk|sort|softmax|multinomial|cumsum|max_kernel|reduce"),
    ("copies, fills, casts", r"copy|fill|memset|memcpy|cat|index|elementwise|vectorized"),
]


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, low)), "other")


def kernel_table(prof: torch.profiler.profile, steps: int, top: int = 15) -> list[str]:
    """GPU time per step by kernel kind, from the profiler's CUDA kernel events; then the `top` kernels."""
    time_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    by_name: dict[str, float] = defaultdict(float)
    name_calls: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kind = kind_of(event.name)
            time_us[kind] += event.device_time_total
            calls[kind] += 1
            by_name[event.name] += event.device_time_total
            name_calls[event.name] += 1
    total = sum(time_us.values()) or 1.0
    lines = ["| kernels | ms per step | share | launches per step |", "|---|---:|---:|---:|"]
    for kind, us in sorted(time_us.items(), key=lambda kv: -kv[1]):
        lines.append(
            f"| {kind} | {us / steps / 1000:.2f} | {100 * us / total:.0f}% | {calls[kind] / steps:.0f} |"
        )
    lines.append(f"| all | {total / steps / 1000:.2f} | 100% | {sum(calls.values()) / steps:.0f} |")
    lines += ["", "| kernel | µs per step | launches per step |", "|---|---:|---:|"]
    for name, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {name[:90]} | {us / steps:.1f} | {name_calls[name] / steps:.0f} |")
    return lines


LINEARS = ("qkv", "o", "gate_up", "down")  # a Llama layer's AWQ matmuls, in the order a decode step runs them


def exposed_table(prof: torch.profiler.profile, steps: int) -> list[str]:
    """How much each kind of kernel lengthens the step: with PDL a kernel starts before the one before it
    ends, so its own duration overlaps; what it adds is how far its end reaches past every earlier
    kernel's (and the GPU's idle gaps between kernels, apart). AWQ matmuls by linear (LINEARS, in turn)."""
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    if not kernels:
        return []
    added: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    reach, idle, awq = kernels[0][0], 0.0, 0
    for start, end, name in kernels:
        kind = kind_of(name)
        if kind == "AWQ matmul":
            kind = f"AWQ matmul, {LINEARS[awq % len(LINEARS)]}"
            awq += 1
        calls[kind] += 1
        if start > reach:
            idle += start - reach
            reach = start
        if end > reach:
            added[kind] += end - reach
            reach = end
    span = reach - kernels[0][0]
    lines = ["| kernels | µs added per step | per launch | launches per step |", "|---|---:|---:|---:|"]
    for kind, us in sorted(added.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {us / steps:.0f} | {us / calls[kind]:.2f} | {calls[kind] / steps:.0f} |")
    lines.append(f"| GPU idle between kernels | {idle / steps:.0f} | | |")
    lines.append(f"| span | {span / steps:.0f} | | |")
    return lines


def profile_batch(llm: LLM, batch: int, prompt_len: int, steps: int) -> None:
    engine = llm.engine
    params = SamplingParams(
        max_new_tokens=steps + 8, min_new_tokens=steps + 8, do_sample=False, ignore_eos=True
    ).resolve({})
    rng = random.Random(0)
    prompts = [random_prompt(llm.loaded.config.vocab_size, prompt_len, rng) for _ in range(batch)]
    for _ in engine.generate_batch([(p, params) for p in prompts]):  # warm up: graphs, kernels
        pass
    cuda = torch.cuda.is_available() and llm.loaded.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    ids = {engine.add_request(p, params) for p in prompts}
    started: set[int] = set()
    prefill_steps, start = 0, time.perf_counter()
    with torch.profiler.profile(activities=activities) as prefill:
        while started != ids:  # the steps with prompt tokens, until every row has its first token
            started |= {seq_id for seq_id, _ in engine.step()}
            prefill_steps += 1
        if cuda:
            torch.cuda.synchronize()
    prefill_wall = (time.perf_counter() - start) / prefill_steps
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as decode:
        for _ in range(steps):
            engine.step()
        if cuda:
            torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    while engine.has_unfinished():
        engine.step()
    for name, prof, n, per_step in (
        ("prefill", prefill, prefill_steps, prefill_wall),
        ("decode", decode, steps, wall),
    ):
        print(
            f"\n{batch} rows, {prompt_len}-token prompts: {n} {name} steps, {per_step * 1000:.2f} ms each (profiled)\n"
        )
        if cuda:
            print("\n".join(kernel_table(prof, n)))
            print("\n" + "\n".join(exposed_table(prof, n)))
        else:
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))


def profile_one(llm: LLM, tokens: int) -> None:
    engine = llm.engine
    params = SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False).resolve({})
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
        # one replay alone, from an idle GPU, against one more behind it: the GPU's wait for the host
        ms = []
        for replays in (1, 2):
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(replays):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            ms.append(begin.elapsed_time(end))
        print(
            f"one replay from idle: {ms[0]:.3f} ms on the GPU clock; a second behind it adds {ms[1] - ms[0]:.3f} ms"
        )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = sum(len(o.token_ids) for o in engine.stream(prompt, params))
    if torch.cuda.is_available():
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="row counts, profiled in turn")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64, help="batch 1: tokens per timed run")
    ap.add_argument("--steps", type=int, default=20, help="decode steps profiled")
    args = ap.parse_args()
    llm = LLM(args.checkpoint, progress=False, engine_config=EngineConfig(max_num_seqs=max(args.batch)))
    for batch in args.batch:
        profile_batch(llm, batch, args.prompt_len, args.steps)
        if batch == 1:
            profile_one(llm, args.tokens)


if __name__ == "__main__":
    main()
