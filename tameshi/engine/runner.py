"""One model step for a scheduled batch: flat input tensors, slot mapping, forward, sampling."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tameshi.engine.paged_cache import PagedKVCache
from tameshi.engine.sampler import Sampler
from tameshi.engine.scheduler import ScheduledBatch
from tameshi.engine.sequence import Sequence
from tameshi.model.llama import LlamaForCausalLM

if TYPE_CHECKING:  # Triton is imported only where graphs are made (CUDA)
    from tameshi.engine.cuda_graphs import DecodeGraphs


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, cache: PagedKVCache, graphs: DecodeGraphs | None = None
    ) -> None:
        self.model = model
        self.cache = cache
        self.graphs = graphs  # CUDA graphs for all-decode batches (None: every step runs eagerly)
        self.sampler = Sampler()
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[tuple[Sequence, int]]:
        """Compute the scheduled tokens; return (sequence, new token) for those that reached their end."""
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
        if self.graphs is not None and len(ids) == len(batch.seqs) and self.graphs.fits(len(ids)):
            logits = self._decode_graph(batch.seqs, ids, positions)
        else:
            self.cache.prepare(spans)
            hidden = self.model(
                torch.tensor(ids, device=self.device), torch.tensor(positions, device=self.device), self.cache
            )
            if not sampling:
                return []
            rows = torch.tensor([row for _, row in sampling], device=self.device)
            logits = self.model.compute_logits(hidden[rows])
        seqs = [seq for seq, _ in sampling]
        tokens = self.sampler(
            logits,
            [torch.tensor(s.token_ids, device=self.device) for s in seqs],
            [s.params for s in seqs],
            [s.generator for s in seqs],
            n_generated=[s.n_generated for s in seqs],
            eos_ids=[tuple(s.stop_ids) for s in seqs],
        )
        return list(zip(seqs, tokens.tolist(), strict=True))

    def _decode_graph(self, seqs: list[Sequence], ids: list[int], positions: list[int]) -> torch.Tensor:
        """Every sequence decodes one token (so each is sampled, in batch order)."""
        bs = self.cache.block_size
        slots = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions, strict=True)]
        tables = [s.block_table[: p // bs + 1] for s, p in zip(seqs, positions, strict=True)]
        return self.graphs.run(ids, positions, slots, tables)
