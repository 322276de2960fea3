"""Decode steps as CUDA graphs: captured once per batch-size bucket, replayed every step.

A decode step of a big model is hundreds of small kernels; launched one by one from Python, the
launches, not the GPU, set the pace. A graph replays them all from one call. Everything a step
varies (token ids, positions, KV slots, block tables, context lengths) lives in static tensors that
are filled before each replay; attention runs the Triton paged decode kernel, which takes lengths as
tensors. A batch of b sequences replays the smallest bucket >= b; the padding rows write their K/V to
a scratch slot and attend one cached token, and their logits are dropped.
"""

from __future__ import annotations

import bisect

import torch

from tameshi.engine.paged_cache import PagedKVCache
from tameshi.kernels.paged_attention import paged_decode_attention
from tameshi.model.llama import LlamaForCausalLM

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class _StaticDecodeBackend:
    """The attention backend inside a graph: reads only tensors that replays refill in place."""

    def __init__(self, cache: PagedKVCache, slots, tables, lens, batch: int) -> None:
        self.cache, self.batch = cache, batch
        self.slots, self.tables, self.lens = slots[:batch], tables[:batch], lens[:batch]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        k_cache.index_copy_(0, self.slots, k)
        v_cache.index_copy_(0, self.slots, v)
        return paged_decode_attention(q, k_cache, v_cache, self.tables, self.lens, self.cache.block_size)


class DecodeGraphs:
    def __init__(
        self, model: LlamaForCausalLM, cache: PagedKVCache, max_batch: int, max_model_len: int
    ) -> None:
        self.model, self.cache = model, cache
        self.buckets = [b for b in BUCKETS if b < max_batch] + [max_batch]
        device = cache.device
        n = self.buckets[-1]
        self.width = -(-max_model_len // cache.block_size)
        # Static inputs: rows ids, positions, KV slots, context lengths; refilled from pinned host
        # buffers by one copy each before every replay.
        self.meta = torch.zeros(4, n, dtype=torch.long, device=device)
        self.ids, self.positions, self.slots, self.lens = self.meta
        self.tables = torch.zeros(n, self.width, dtype=torch.int32, device=device)
        self.host_meta = torch.zeros(4, n, dtype=torch.long).pin_memory()
        self.host_tables = torch.zeros(n, self.width, dtype=torch.int32).pin_memory()
        self._meta_np, self._tables_np = self.host_meta.numpy(), self.host_tables.numpy()
        self._meta_np[2], self._meta_np[3] = cache.scratch_slot, 1
        self.meta.copy_(self.host_meta)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up (compiles the Triton kernels) and capture every bucket, largest first so that the
        smaller ones reuse its memory pool."""
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.buckets):
            backend = _StaticDecodeBackend(self.cache, self.slots, self.tables, self.lens, b)
            stream = torch.cuda.Stream(self.cache.device)
            stream.wait_stream(torch.cuda.current_stream(self.cache.device))
            with torch.cuda.stream(stream):
                self._forward(b, backend)
            torch.cuda.current_stream(self.cache.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[b] = self._forward(b, backend)
            self.graphs[b] = graph
        torch.cuda.synchronize(self.cache.device)

    def _forward(self, b: int, backend: _StaticDecodeBackend) -> torch.Tensor:
        hidden = self.model(self.ids[:b], self.positions[:b], backend)
        return self.model.compute_logits(hidden)

    def fits(self, batch: int) -> bool:
        return batch <= self.buckets[-1]

    def run(
        self, ids: list[int], positions: list[int], slots: list[int], tables: list[list[int]]
    ) -> torch.Tensor:
        """One decode step for len(ids) sequences; returns their logits [len(ids), vocab]."""
        if not self.graphs:
            self.capture()
        n = len(ids)
        b = self.buckets[bisect.bisect_left(self.buckets, n)]
        # The pinned buffers are free to refill: the previous step's copies ran before its logits
        # were read. Padding rows keep the scratch slot, length 1 and table row 0.
        meta, tables_np = self._meta_np, self._tables_np
        meta[0, :n], meta[1, :n], meta[2, :n] = ids, positions, slots
        meta[3, :n] = meta[1, :n] + 1
        meta[:2, n:b] = 0
        meta[2, n:b], meta[3, n:b] = self.cache.scratch_slot, 1
        tables_np[:b] = 0
        for row, table in enumerate(tables):
            tables_np[row, : len(table)] = table
        self.meta.copy_(self.host_meta, non_blocking=True)  # 4 x max batch: whole rows, one copy
        self.tables[:b].copy_(self.host_tables[:b], non_blocking=True)
        self.graphs[b].replay()
        return self.logits[b][:n]
