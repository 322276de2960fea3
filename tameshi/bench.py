"""`tameshi bench`: how fast a model runs here, against what this machine's memory allows.

Decode of one sequence reads every weight once per token, so its ceiling is memory bandwidth over
weight bytes. The bench measures that bandwidth itself (a large device-to-device copy) in the same
run, then reports time to first token, batch-1 decode, aggregate decode at N concurrent requests,
the weight bandwidth decode achieved and its share of the measured one, and peak memory.
"""

from __future__ import annotations

import dataclasses
import random
import resource
import sys
import time
from collections.abc import Callable

import torch

from tameshi.engine.engine import Engine, StepTimes
from tameshi.sampling_params import SamplingParams


@dataclasses.dataclass
class BenchResult:
    model: str
    device: str
    dtype: str
    weight_gb: float  # bytes read per decoded token (all weights but the embedding lookup), 1e9
    copy_gbps: float  # measured in this run
    load_s: float
    kv_tokens: int  # KV cache capacity, tokens
    prompt_len: int
    gen_len: int
    ttft_prompt_len: int
    ttft_s: float  # median
    decode_tps: float  # batch 1, tokens/s after the first token
    concurrency: int
    concurrent_prompt_len: int
    concurrent_gen_len: int
    aggregate_tps: float  # generated tokens / wall time of the whole batch, prefills included
    solo_checked: int  # greedy requests of the batch compared with their solo runs
    solo_equal: int
    solo_common_prefix: list[int]  # per checked request: tokens equal before the first difference
    peak_gpu_gb: float  # torch's peak allocation (the KV pool included)
    peak_host_gb: float
    # the device's memory in use at the end by every process (CUDA context, libraries and torch's
    # cache included), read from the driver: what the model, its pool and the run took of the GPU
    gpu_used_gb: float = 0.0
    batch_invariant: bool = False  # EngineConfig.batch_invariant: batch outputs must equal solo bit for bit
    tp: int = 1  # tensor-parallel ranks: weight bytes, copy bandwidth and GPU memory are one rank's
    # per checked request that differs: the solo run's top-1 minus top-2 logprob where they part, and
    # whether the batch took the solo run's second choice there (a near tie, not a batching bug)
    solo_part_margin: list[float] = dataclasses.field(default_factory=list)
    solo_part_second: list[bool] = dataclasses.field(default_factory=list)
    # where the concurrent run's wall time went (Engine.step_times over that run)
    concurrent_steps: StepTimes | None = None

    @property
    def weight_gbps(self) -> float:
        return self.weight_gb * self.decode_tps

    def _parting(self) -> str:
        parts = [
            f"{m:.3g} nats ({'batch took its 2nd choice' if second else 'batch took another token'})"
            for m, second in zip(self.solo_part_margin, self.solo_part_second, strict=True)
        ]
        return "; ".join(parts)

    def _step_rows(self) -> list[tuple[str, str]]:
        t = self.concurrent_steps
        if t is None:
            return []
        rows = []
        if t.prefill_steps:
            rows.append((
                "  of which steps with prompt tokens",
                f"{t.prefill_s:.2f} s: {t.prefill_steps} steps, {t.prefill_tokens / t.prefill_s:,.0f} prompt tokens/s",
            ))  # fmt: skip
        if t.decode_steps:
            rows.append((
                "  of which decode steps",
                f"{t.decode_s:.2f} s: {t.decode_steps} steps, {1000 * t.decode_s / t.decode_steps:.1f} ms each "
                f"at {t.decode_rows / t.decode_steps:.1f} sequences on average, "
                f"{t.decode_rows / t.decode_s:,.0f} tokens/s",
            ))  # fmt: skip
        return rows

    @property
    def bandwidth_share(self) -> float:
        return self.weight_gbps / self.copy_gbps if self.copy_gbps else 0.0

    def rows(self) -> list[tuple[str, str]]:
        # Under tensor parallel every GPU reads its own shard at once: one GPU's share of its own
        # bandwidth is the share of the whole machine's.
        per_gpu = f" per rank (tp={self.tp})" if self.tp > 1 else ""
        return [
            ("model", self.model),
            (
                "device / dtype",
                f"{self.device} / {self.dtype}" + (f" × {self.tp} ranks" if self.tp > 1 else ""),
            ),
            ("batch-invariant mode", "on" if self.batch_invariant else "off"),
            ("weights read per token" + per_gpu, f"{self.weight_gb:.2f} GB"),
            ("load time", f"{self.load_s:.1f} s"),
            ("KV cache capacity", f"{self.kv_tokens:,} tokens"),
            (f"TTFT, {self.ttft_prompt_len}-token prompt", f"{self.ttft_s * 1000:.1f} ms"),
            (f"decode, batch 1 ({self.prompt_len} in)", f"{self.decode_tps:.1f} tokens/s"),
            (
                f"aggregate, {self.concurrency} concurrent "
                f"({self.concurrent_prompt_len} in, {self.concurrent_gen_len} out)",
                f"{self.aggregate_tps:.1f} tokens/s",
            ),
            *self._step_rows(),
            (
                "greedy batch outputs equal to solo",
                f"{self.solo_equal}/{self.solo_checked} (equal prefixes: "
                f"{', '.join(map(str, self.solo_common_prefix))} of {self.concurrent_gen_len})",
            ),
            *([("where they part: solo's top-2 margin", self._parting())] if self.solo_part_margin else []),
            ("measured copy bandwidth" + per_gpu, f"{self.copy_gbps:.0f} GB/s"),
            (
                "weight bandwidth at batch 1" + per_gpu,
                f"{self.weight_gbps:.0f} GB/s = {100 * self.bandwidth_share:.0f}% of measured",
            ),
            ("peak GPU memory" + (" (rank 0)" if self.tp > 1 else ""), f"{self.peak_gpu_gb:.2f} GB"),
            ("GPU memory in use at the end, whole device", f"{self.gpu_used_gb:.2f} GB"),
            ("peak host memory (RSS)", f"{self.peak_host_gb:.2f} GB"),
        ]


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every tensor a module holds (parameters, buffers and
    repacked kernel layouts), except the embedding table, of which a step reads one row — unless the
    head is tied to it and reads all of it."""
    tied = getattr(model, "lm_head", 0) is None
    seen: set[int] = set()
    total = 0
    for name, module in model.named_modules():
        if name.endswith("embed_tokens") and not tied:
            continue
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        for value in vars(module).values():
            if not isinstance(value, torch.Tensor) and hasattr(value, "__dict__"):  # KPacked, Int4Weight …
                tensors += [t for t in vars(value).values() if isinstance(t, torch.Tensor)]
        for t in tensors:
            if t.data_ptr() not in seen and not t.is_meta:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def copy_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 10) -> float:
    """Achieved bandwidth of a large copy on the device, GB/s (read + write counted)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.float16, device=device).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * n * 2 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_prompt(vocab: int, length: int, rng: random.Random) -> list[int]:
    # Random ids in the lower vocabulary (ordinary tokens): distinct prompts, so no prefix-cache hits.
    return [rng.randrange(100, min(vocab, 30000)) for _ in range(length)]


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens a and b share before the first difference."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def parting(got: list[int], ref: list[int], ref_top: list) -> tuple[int, float, bool] | None:
    """Where `got` parts from `ref`, given ref's top-2 (id, logprob) at each token: (the index, ref's
    top-1 minus top-2 logprob there, whether got took ref's second choice). A small margin and the
    second choice read as a near tie, not a bug. None where they do not part (or the top-2 is unknown)."""
    at = common_prefix(got, ref)
    if at < min(len(got), len(ref)) and at < len(ref_top) and len(ref_top[at]) >= 2:
        (_, first), (second_id, second) = ref_top[at][:2]
        return at, first - second, second_id == got[at]
    return None


def _timed_stream(engine: Engine, prompt: list[int], params: SamplingParams) -> tuple[float, float, int]:
    """(seconds to the first token, seconds from the first to the last token, tokens)."""
    start = time.perf_counter()
    first = last = start
    n = 0
    for out in engine.stream(prompt, params):
        if out.token_ids:
            last = time.perf_counter()
            if n == 0:
                first = last
            n += len(out.token_ids)
    return first - start, last - first, n


def run_bench(
    llm,
    name: str,
    prompt_len: int = 128,
    gen_len: int = 128,
    ttft_prompt_len: int = 1024,
    concurrency: int = 8,
    concurrent_prompt_len: int | None = None,
    concurrent_gen_len: int | None = None,
    solo_checks: int = 2,
    load_s: float = 0.0,
    say: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    engine: Engine = llm.engine
    model = llm.loaded.model
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    rng = random.Random(0)
    greedy = dict(do_sample=False, ignore_eos=True)
    fixed = SamplingParams(max_new_tokens=gen_len, min_new_tokens=gen_len, **greedy).resolve({})

    say("measuring copy bandwidth")
    copy = copy_bandwidth(device, gib=1.0 if device.type == "cuda" else 0.25)
    say("warming up (CUDA graphs, Triton kernels)")
    warm = SamplingParams(max_new_tokens=4, min_new_tokens=4, **greedy).resolve({})
    _timed_stream(engine, random_prompt(vocab, prompt_len, rng), warm)
    _timed_stream(engine, random_prompt(vocab, ttft_prompt_len, rng), warm)

    say(f"TTFT at {ttft_prompt_len} tokens")
    one = SamplingParams(max_new_tokens=1, **greedy).resolve({})
    ttft = sorted(
        _timed_stream(engine, random_prompt(vocab, ttft_prompt_len, rng), one)[0] for _ in range(5)
    )[2]

    say(f"batch-1 decode, {gen_len} tokens")
    _, decode_s, n = _timed_stream(engine, random_prompt(vocab, prompt_len, rng), fixed)
    decode_tps = (n - 1) / decode_s if decode_s > 0 else 0.0

    say(f"{concurrency} concurrent requests")
    c_prompt, c_gen = concurrent_prompt_len or prompt_len, concurrent_gen_len or gen_len
    fixed = SamplingParams(max_new_tokens=c_gen, min_new_tokens=c_gen, **greedy).resolve({})
    prompts = [random_prompt(vocab, c_prompt, rng) for _ in range(concurrency)]
    got: dict[int, list[int]] = {i: [] for i in range(concurrency)}
    _sync(device)
    engine.step_times = StepTimes()
    start = time.perf_counter()
    for i, out in engine.generate_batch([(p, fixed) for p in prompts]):
        got[i] += out.token_ids
    _sync(device)
    wall = time.perf_counter() - start
    aggregate = sum(len(t) for t in got.values()) / wall
    steps, engine.step_times = engine.step_times, StepTimes()  # the solo runs below are not counted

    say("solo runs of part of the batch")
    checked = min(solo_checks, concurrency)
    prefixes, margins, seconds = [], [], []
    # the solo run also reads its top-2 logprobs: where it parts from the batch, was it a near tie?
    solo_params = dataclasses.replace(fixed, logprobs=2)
    for i in range(checked):
        solo, top = [], []
        for out in engine.stream(prompts[i], solo_params):
            solo += out.token_ids
            top += [lp.top for lp in out.logprobs or []]
        prefixes.append(common_prefix(solo, got[i]))
        where = parting(got[i], solo, top)
        if where is not None:
            margins.append(where[1])
            seconds.append(where[2])
    equal = sum(p == c_gen for p in prefixes)

    stats = engine.stats()
    peak_gpu = used_gpu = 0.0
    if device.type == "cuda":
        peak_gpu = torch.cuda.max_memory_allocated(device) / 1e9
        free, total = torch.cuda.mem_get_info(device)
        used_gpu = (total - free) / 1e9
    # ru_maxrss: KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return BenchResult(
        model=name, device=str(device), dtype=str(llm.loaded.dtype).removeprefix("torch."),
        weight_gb=weight_bytes_per_token(model) / 1e9, copy_gbps=copy, load_s=load_s,
        kv_tokens=stats.kv_blocks_total * stats.block_size, prompt_len=prompt_len, gen_len=gen_len,
        ttft_prompt_len=ttft_prompt_len, ttft_s=ttft, decode_tps=decode_tps, concurrency=concurrency,
        concurrent_prompt_len=c_prompt, concurrent_gen_len=c_gen,
        aggregate_tps=aggregate, solo_checked=checked, solo_equal=equal,
        solo_common_prefix=prefixes, solo_part_margin=margins, solo_part_second=seconds,
        peak_gpu_gb=peak_gpu, gpu_used_gb=used_gpu, peak_host_gb=rss / 1e9,
        batch_invariant=engine.config.batch_invariant, tp=model.tp.world if model.tp is not None else 1,
        concurrent_steps=steps,
    )  # fmt: skip
