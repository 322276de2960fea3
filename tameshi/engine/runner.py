"""One model step for a scheduled batch: flat input tensors, slot mapping, forward, sampling."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tameshi.engine.paged_cache import PagedKVCache
from tameshi.engine.sampler import Sampler, token_logprobs
from tameshi.engine.scheduler import ScheduledBatch
from tameshi.engine.sequence import Sequence, TokenLogprob
from tameshi.model.llama import LlamaForCausalLM

if TYPE_CHECKING:  # Triton is imported only where graphs are made (CUDA)
    from tameshi.engine.cuda_graphs import DecodeGraphs


@dataclass
class StepPlan:
    """What every rank needs to run one step's forward (tensor parallel sends it to the followers)."""

    ids: list[int]
    positions: list[int]
    spans: list[tuple[list[int], int, int]]  # per sequence: block table, first new position, new tokens
    rows: list[int]  # rows of the batch whose logits are needed


def forward_step(model: LlamaForCausalLM, cache: PagedKVCache, plan: StepPlan) -> torch.Tensor | None:
    """The eager forward of one step: logits [len(plan.rows), vocab], or None when no row is sampled."""
    device = cache.device
    cache.prepare(plan.spans)
    hidden = model(torch.tensor(plan.ids, device=device), torch.tensor(plan.positions, device=device), cache)
    if not plan.rows:
        return None
    return model.compute_logits(hidden[torch.tensor(plan.rows, device=device)])


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        cache: PagedKVCache,
        graphs: DecodeGraphs | None = None,
        batch_invariant: bool = False,
    ) -> None:
        self.model = model
        self.cache = cache
        self.graphs = graphs  # CUDA graphs for all-decode batches (None: every step runs eagerly)
        # the model's mode for this runner's steps (engines may share a model; graphs capture the mode
        # of their first step, which is this one)
        self.batch_invariant = batch_invariant
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
        if self.model.batch_invariant != self.batch_invariant:
            self.model.set_batch_invariant(self.batch_invariant)
        tp = self.model.tp
        with tp.whole_step() if tp is not None else contextlib.nullcontext():
            if self.graphs is not None and len(ids) == len(batch.seqs) and self.graphs.fits(len(ids)):
                logits = self._decode_graph(batch.seqs, ids, positions)  # sends the followers their step
            else:
                plan = StepPlan(ids, positions, spans, [row for _, row in sampling])
                if tp is not None:
                    tp.send(plan)  # the followers run this same forward on their shards
                logits = forward_step(self.model, self.cache, plan)
        if logits is None:
            return []
        seqs = [seq for seq, _ in sampling]
        params = [s.params for s in seqs]
        tokens = self.sampler(
            logits,
            [s.token_ids for s in seqs],  # host lists: copied to the device only for a repetition penalty
            params,
            [s.generator for s in seqs],
            n_generated=[s.n_generated for s in seqs],
            eos_ids=[tuple(s.stop_ids) for s in seqs],
        )
        logprobs = token_logprobs(logits, tokens, params)
        # a row with a NaN logit (corrupt weights, an fp16 overflow) samples nonsense, greedy the id 0:
        # marked -1 on the device, so that the check costs no extra sync (Engine.step fails it)
        tokens = torch.where(torch.isnan(logits).any(dim=-1), -1, tokens)
        return list(zip(seqs, tokens.tolist(), logprobs, strict=True))

    def _decode_graph(self, seqs: list[Sequence], ids: list[int], positions: list[int]) -> torch.Tensor:
        """Every sequence decodes one token (so each is sampled, in batch order)."""
        bs = self.cache.block_size
        slots = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions, strict=True)]
        tables = [s.block_table[: p // bs + 1] for s, p in zip(seqs, positions, strict=True)]
        return self.graphs.run(ids, positions, slots, tables)
