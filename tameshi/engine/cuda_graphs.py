"""Decode steps as CUDA graphs: captured once per batch-size bucket, replayed every step.

A decode step of a big model is hundreds of small kernels; launched one by one from Python, the
launches, not the GPU, set the pace. A graph replays them all from one call. Everything a step
varies (token ids, positions, KV slots, block tables, context lengths) lives in static tensors that
are filled before each replay; attention runs the Triton paged decode kernel, which takes lengths as
tensors. A batch of b sequences replays the smallest bucket >= b; the padding rows write their K/V to
a scratch slot and attend one cached token, and their logits are dropped.

Under tensor parallel every rank holds the same graphs: rank 0 tells the followers to capture
(`CaptureGraphs`) before it does, so both record the same collectives in the same order, and sends
each step's inputs (`GraphStep`) before it replays; a follower fills its own buffers and replays too.
NCCL keeps a communicator alive while any graph holds its collectives, so the graphs are released
before the process group is destroyed (`release`, called by TensorParallel.close).

Off CUDA (tests) nothing is captured: the same static buffers and padded buckets run eagerly, so
everything but the capture itself can be checked on a CPU.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tameshi.engine.paged_cache import PagedKVCache
from tameshi.kernels.fused import store_kv
from tameshi.kernels.paged_attention import paged_decode_attention, paged_decode_attention_x16
from tameshi.model.llama import LlamaForCausalLM

if TYPE_CHECKING:
    from tameshi.kernels.awq_x16 import QuantizedX

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class _StaticDecodeBackend:
    """The attention backend inside a graph: reads only tensors that replays refill in place."""

    def __init__(self, cache: PagedKVCache, slots, tables, lens, batch: int) -> None:
        self.cache, self.batch = cache, batch
        self.slots, self.tables, self.lens = slots[:batch], tables[:batch], lens[:batch]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self._store(layer, k, v)
        return paged_decode_attention(q, k_cache, v_cache, self.tables, self.lens, self.cache.block_size)

    def attend_x16(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, QuantizedX | None]:
        k_cache, v_cache = self._store(layer, k, v)
        return paged_decode_attention_x16(q, k_cache, v_cache, self.tables, self.lens, self.cache.block_size)

    def _store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        store_kv(k, v, k_cache, v_cache, self.slots)
        return k_cache, v_cache


@dataclass
class CaptureGraphs:
    """Rank 0 -> followers: make DecodeGraphs of these sizes and capture them, now."""

    max_batch: int
    max_model_len: int


@dataclass
class GraphStep:
    """Rank 0 -> followers: the inputs of one graph decode step (DecodeGraphs.run's arguments)."""

    ids: list[int]
    positions: list[int]
    slots: list[int]
    tables: list[list[int]]


class DecodeGraphs:
    def __init__(
        self, model: LlamaForCausalLM, cache: PagedKVCache, max_batch: int, max_model_len: int
    ) -> None:
        self.model, self.cache = model, cache
        self.buckets = [b for b in BUCKETS if b < max_batch] + [max_batch]
        self.max_model_len = max_model_len
        device = cache.device
        self.real = device.type == "cuda"  # else: the same steps, run eagerly (see the module doc)
        n = self.buckets[-1]
        self.width = -(-max_model_len // cache.block_size)
        # Static inputs: rows ids, positions, KV slots, context lengths; refilled from pinned host
        # buffers by one copy each before every replay.
        self.meta = torch.zeros(4, n, dtype=torch.long, device=device)
        self.ids, self.positions, self.slots, self.lens = self.meta
        self.tables = torch.zeros(n, self.width, dtype=torch.int32, device=device)
        self.host_meta = torch.zeros(4, n, dtype=torch.long)
        self.host_tables = torch.zeros(n, self.width, dtype=torch.int32)
        if self.real:
            self.host_meta, self.host_tables = self.host_meta.pin_memory(), self.host_tables.pin_memory()
        self._meta_np, self._tables_np = self.host_meta.numpy(), self.host_tables.numpy()
        self._meta_np[2], self._meta_np[3] = cache.scratch_slot, 1
        self.meta.copy_(self.host_meta)
        # set once the last step's host-to-device copies have run: then the pinned buffers are free
        self._copied = torch.cuda.Event() if self.real else None
        self.graphs: dict[int, torch.cuda.CUDAGraph | None] = {}
        self.backends: dict[int, _StaticDecodeBackend] = {}
        self.logits: dict[int, torch.Tensor] = {}

    @property
    def _leader(self):
        """The TensorParallel of rank 0, whose followers must do what it does; else None."""
        tp = self.model.tp
        return tp if tp is not None and tp.is_leader else None

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up (compiles the Triton kernels) and capture every bucket, largest first so that the
        smaller ones reuse its memory pool."""
        if self._leader is not None:
            self._leader.send(CaptureGraphs(self.buckets[-1], self.max_model_len))
        for b in reversed(self.buckets):
            self.backends[b] = _StaticDecodeBackend(self.cache, self.slots, self.tables, self.lens, b)
        if not self.real:
            self.graphs = dict.fromkeys(self.buckets)
            return
        pool = torch.cuda.graph_pool_handle()
        # Under tensor parallel the NCCL collectives are captured too; "thread_local" keeps NCCL's and
        # the process group's own threads (which query events) out of the capture's checks.
        mode = "global" if self.model.tp is None else "thread_local"
        for b in reversed(self.buckets):
            backend = self.backends[b]
            stream = torch.cuda.Stream(self.cache.device)
            stream.wait_stream(torch.cuda.current_stream(self.cache.device))
            with torch.cuda.stream(stream):
                self._forward(b, backend)
            torch.cuda.current_stream(self.cache.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode=mode):
                self.logits[b] = self._forward(b, backend)
            self.graphs[b] = graph
        torch.cuda.synchronize(self.cache.device)

    def release(self) -> None:
        """Drop the graphs (and their memory); the next run captures again."""
        if self.real and self.graphs:
            torch.cuda.synchronize(self.cache.device)
        self.graphs.clear()
        self.logits.clear()
        self.backends.clear()

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
        if self._leader is not None:
            self._leader.send(GraphStep(ids, positions, slots, tables))
        n = len(ids)
        b = self.buckets[bisect.bisect_left(self.buckets, n)]
        if self._copied is not None:
            # Rank 0 read the last step's logits, so its copies are done and this returns at once;
            # a follower reads nothing back and may be a step ahead of its GPU.
            self._copied.synchronize()
        # Padding rows keep the scratch slot, length 1 and table row 0.
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
        if not self.real:
            self.logits[b] = self._forward(b, self.backends[b])
            return self.logits[b][:n]
        self._copied.record(torch.cuda.current_stream(self.cache.device))  # the copies' stream
        self.graphs[b].replay()
        return self.logits[b][:n]
