"""Next-token choice for a batch of requests, matching transformers' `generate` row by row.

Processors run in `GenerationMixin._get_logits_processor`'s order (docs: formats.md §5):
repetition penalty -> min_new_tokens EOS mask -> (sampling rows only) temperature -> top-k -> top-p
-> min-p. Each stage is one batched op over [B, V] with per-row parameters as [B, 1] tensors, so a
decode step costs the same few kernels for 1 or 256 requests. A row whose parameter turns a stage
off gets a neutral value (temperature 1, no top-k, no top-p threshold, min_p 0) that leaves its
scores bit-identical, because HF runs no processor for it at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tameshi.engine.sequence import TokenLogprob
from tameshi.sampling_params import SamplingParams

_NEG_INF = float("-inf")


def process_logits(
    logits: torch.Tensor,
    history: Sequence[torch.Tensor | list[int]],
    params: list[SamplingParams],
    n_generated: list[int] | None = None,
    eos_ids: list[tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """Scores [B, V] float32 as HF's processors give them; `params` must be resolved. `history`: each
    row's token ids so far (prompt and generated), read only for a repetition penalty."""
    if not len(history) == len(params) == logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows, {len(history)} histories, {len(params)} params")
    # HF casts the last position's logits to float32 before any processor runs; copy=True because
    # later stages may write in place and the caller's tensor must stay untouched
    scores = logits.to(torch.float32, copy=True)
    scores = _apply_repetition_penalty(scores, history, params)
    scores = _mask_eos_before_min_new_tokens(scores, params, n_generated, eos_ids)
    if any(not p.greedy for p in params):
        scores = _apply_warpers(scores, params)
    return scores


class Sampler:
    """Greedy rows take the argmax; sampled rows draw like HF: softmax, then torch.multinomial."""

    def __call__(
        self,
        logits: torch.Tensor,
        history: Sequence[torch.Tensor | list[int]],
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        n_generated: list[int] | None = None,
        eos_ids: list[tuple[int, ...]] | None = None,
    ) -> torch.Tensor:
        scores = process_logits(logits, history, params, n_generated, eos_ids)
        ids = scores.argmax(dim=-1)
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if not sampled:
            return ids
        probs = _finite_rows(scores.softmax(dim=-1), ids)
        unseeded = [i for i in sampled if generators[i] is None]
        if unseeded:
            # one draw for all unseeded rows from the global generator instead of a kernel per row
            rows = _host_to_device(unseeded, torch.long, ids.device)
            ids[rows] = torch.multinomial(probs[rows], 1).squeeze(1)
        for i in sampled:
            if generators[i] is not None:
                # a [1, V] draw from a generator seeded like torch.manual_seed(seed) consumes the same
                # random numbers as HF's torch.multinomial(probs, 1) for one prompt, so ids match
                ids[i : i + 1] = torch.multinomial(probs[i : i + 1], 1, generator=generators[i]).squeeze(1)
        return ids


def _finite_rows(probs: torch.Tensor, fallback_ids: torch.Tensor) -> torch.Tensor:
    """Rows holding NaN or inf (a penalty of 1e-40 overflowing the scores, NaN logits from an fp16
    model) draw their argmax instead of raising in torch.multinomial, which would end the engine loop
    for every request (reliability.md §3.9). Branch-free, so the GPU path gains no host sync."""
    bad = ~torch.isfinite(probs).all(dim=-1, keepdim=True)
    one_hot = torch.nn.functional.one_hot(fallback_ids, probs.shape[-1]).to(probs.dtype)
    return torch.where(bad, one_hot, probs)


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, params: list[SamplingParams]
) -> list[TokenLogprob | None]:
    """Each asking row's chosen-token logprob and its top `params.logprobs` alternatives.

    From the log_softmax of the raw logits, before penalties, temperature or truncation, as OpenAI and
    vLLM report them: a logprob says what the model thought, not what the sampler was allowed to pick.
    """
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not rows:
        return [None] * len(params)
    index = _host_to_device(rows, torch.long, logits.device)
    logp = torch.log_softmax(logits[index].to(torch.float32), dim=-1)
    chosen = logp.gather(1, token_ids[index].unsqueeze(1)).squeeze(1)
    k = min(max(params[i].logprobs for i in rows), logp.shape[1])  # type: ignore[type-var]
    top = torch.topk(logp, k, dim=-1) if k else None
    # one device-to-host copy per tensor, not one per row
    chosen_ids, chosen_values = token_ids[index].tolist(), chosen.tolist()
    top_ids = top.indices.tolist() if top is not None else [[] for _ in rows]
    top_values = top.values.tolist() if top is not None else [[] for _ in rows]
    out: list[TokenLogprob | None] = [None] * len(params)
    for j, i in enumerate(rows):
        n = params[i].logprobs
        pairs = tuple(zip(top_ids[j][:n], top_values[j][:n], strict=True))
        out[i] = TokenLogprob(chosen_ids[j], chosen_values[j], pairs)
    return out


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator for one seeded request; None for unseeded ones, which share the global generator."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _apply_repetition_penalty(
    scores: torch.Tensor, history: Sequence[torch.Tensor | list[int]], params: list[SamplingParams]
) -> torch.Tensor:
    penalties = [p.repetition_penalty for p in params]
    if all(penalty == 1.0 for penalty in penalties):
        return scores
    batch, vocab = scores.shape
    # pad (and clamp stray ids) to column `vocab`, dropped after the scatter, as HF does for ids past
    # lm_head; one padded copy to the device for the whole batch
    rows = [h.tolist() if isinstance(h, torch.Tensor) else h for h in history]
    width = max(map(len, rows), default=0)
    padded = [[*row, *[vocab] * (width - len(row))] for row in rows]  # new lists: histories stay as they are
    ids = _host_to_device(padded, torch.long, scores.device).view(batch, width).clamp_(max=vocab)
    seen = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, ids, True)
    penalty = _host_to_device(penalties, torch.float32, scores.device).unsqueeze(1)
    penalised = torch.where(scores < 0, scores * penalty, _divide_rows(scores, penalties))
    return torch.where(seen[:, :vocab], penalised, scores)


def _mask_eos_before_min_new_tokens(
    scores: torch.Tensor,
    params: list[SamplingParams],
    n_generated: list[int] | None,
    eos_ids: list[tuple[int, ...]] | None,
) -> torch.Tensor:
    rows: list[int] = []
    cols: list[int] = []
    for i, p in enumerate(params):
        if not p.min_new_tokens:
            continue
        if n_generated is None:
            raise ValueError("process_logits needs n_generated when a request sets min_new_tokens")
        if n_generated[i] < p.min_new_tokens:
            # every id that would end the request is held back, not only the model's EOS
            ending = dict.fromkeys((*(eos_ids[i] if eos_ids else ()), *p.stop_token_ids))
            rows += [i] * len(ending)
            cols += list(ending)
    if not rows:
        return scores
    index = _host_to_device([rows, cols], torch.long, scores.device)
    return scores.index_put_((index[0], index[1]), torch.tensor(_NEG_INF, device=scores.device))


def _apply_warpers(scores: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    temperatures, top_ks, top_p_cuts, min_ps = [], [], [], []
    for p in params:
        on = not p.greedy
        temperatures.append(p.temperature if on else 1.0)
        top_ks.append(p.top_k if on and p.top_k else 0)
        # HF removes sorted tokens whose cumulative prob is <= 1 - top_p (computed in double, like HF);
        # -1 removes nothing, which is what skipping TopP (top_p == 1) does; 0 would drop prob-0 tokens
        top_p_cuts.append(1.0 - p.top_p if on and p.top_p < 1.0 else -1.0)
        min_ps.append(p.min_p if on and p.min_p is not None else 0.0)
    device = scores.device
    if any(t != 1.0 for t in temperatures):
        scores = _divide_rows(scores, temperatures)
    if any(top_ks):
        scores = _top_k(scores, top_ks)
    if any(cut >= 0 for cut in top_p_cuts):
        scores = _top_p(scores, _host_to_device(top_p_cuts, torch.float32, device).unsqueeze(1))
    if any(min_ps):
        probs = scores.softmax(dim=-1)
        threshold = _host_to_device(min_ps, torch.float32, device).unsqueeze(1) * probs.amax(-1, keepdim=True)
        # HF also re-keeps the most probable token, which min_p <= 1 can never remove anyway
        scores = scores.masked_fill(probs < threshold, _NEG_INF)
    return scores


def _top_k(scores: torch.Tensor, top_ks: list[int]) -> torch.Tensor:
    """Drop scores below each row's k-th largest (ties with it kept); k == 0 means off for that row."""
    vocab = scores.shape[1]
    ks = [min(k, vocab) for k in top_ks]
    # one topk at the largest k serves every row: row i reads its own k-th value out of it
    largest = torch.topk(scores, max(ks), dim=-1).values
    device = scores.device
    kth_index = _host_to_device([max(k, 1) - 1 for k in ks], torch.long, device).unsqueeze(1)
    off = _host_to_device([k == 0 for k in ks], torch.bool, device).unsqueeze(1)
    kth = largest.gather(1, kth_index).masked_fill(off, _NEG_INF)
    return scores.masked_fill(scores < kth, _NEG_INF)


def _top_p(scores: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    # The same ascending sort of the same (top-k-filtered) scores as HF's TopPLogitsWarper, so equal
    # scores straddling the cut are kept or dropped in the same order; cumsum runs low to high like HF.
    sorted_scores, sorted_index = torch.sort(scores, dim=-1, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= cuts
    remove[:, -1] = False  # min_tokens_to_keep = 1: the most probable token always stays
    return scores.masked_fill(remove.scatter(1, sorted_index, remove), _NEG_INF)


def _divide_rows(scores: torch.Tensor, divisors: list[float]) -> torch.Tensor:
    """Row i divided by divisors[i], rounded exactly as HF's `scores / python_float` is on this device."""
    if scores.device.type == "cuda":
        # CUDA divides a tensor by a Python float as a * float32(1.0 / b) (div_true_kernel_cuda), which
        # can differ from true division in the last bit; mirroring it keeps GPU scores bit-equal to HF's
        # (checked on an H100 with torch 2.11: true division or 1 / float32(b) both miss for b = 1.1)
        inverses = [1.0 / d for d in divisors]
        return scores * _host_to_device(inverses, torch.float32, scores.device).unsqueeze(1)
    return scores / _host_to_device(divisors, torch.float32, scores.device).unsqueeze(1)


def _host_to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    tensor = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        # pinned + non_blocking: a copy from pageable memory makes the host wait for the GPU queue
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
