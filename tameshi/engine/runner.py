"""One model step for a scheduled batch: flat input tensors, slot mapping, forward, sampling."""

from __future__ import annotations

import torch

from tameshi.engine.paged_cache import PagedKVCache
from tameshi.engine.sampler import Sampler, token_logprobs
from tameshi.engine.scheduler import ScheduledBatch
from tameshi.engine.sequence import Sequence, TokenLogprob
from tameshi.model.llama import LlamaForCausalLM


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cache: PagedKVCache) -> None:
        self.model = model
        self.cache = cache
        self.sampler = Sampler()
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[tuple[Sequence, int, TokenLogprob | None]]:
        """Compute the scheduled tokens; return (sequence, new token, its logprobs if asked for) for
        those that reached their end."""
        ids: list[int] = []
        positions: list[int] = []
        spans = []
        sampling: list[tuple[Sequence, int]] = []  # (seq, row of its last token)
        for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
            start = seq.num_computed_tokens
            ids += seq.token_ids[start : start + n]
            positions += range(start, start + n)
            spans.append((seq.block_table, start, n))
            if start + n == len(seq):
                sampling.append((seq, len(ids) - 1))
        self.cache.prepare(spans)
        hidden = self.model(
            torch.tensor(ids, device=self.device), torch.tensor(positions, device=self.device), self.cache
        )
        if not sampling:
            return []
        rows = torch.tensor([row for _, row in sampling], device=self.device)
        logits = self.model.compute_logits(hidden[rows])
        seqs = [seq for seq, _ in sampling]
        params = [s.params for s in seqs]
        tokens = self.sampler(
            logits,
            [torch.tensor(s.token_ids, device=self.device) for s in seqs],
            params,
            [s.generator for s in seqs],
            n_generated=[s.n_generated for s in seqs],
            eos_ids=[tuple(s.stop_ids) for s in seqs],
        )
        logprobs = token_logprobs(logits, tokens, params)
        return list(zip(seqs, tokens.tolist(), logprobs, strict=True))
