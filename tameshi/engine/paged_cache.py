"""The paged KV pool and attention over it, in PyTorch (the CPU path, and the reference for kernels).

Slots are numbered block_id * block_size + offset. Before a step the runner calls `prepare` with each
sequence's query span and context; every layer's `attend` then writes the new K/V into their slots
and attends each sequence over its own context. Decode sequences (one query each) are gathered and
attended in one call: on CUDA in half precision the Triton paged kernel (the one decode graphs run),
elsewhere a padded SDPA; prefill chunks one by one. With `batch_invariant` set, decodes off that
kernel are attended one by one too: a padded call's sums over keys follow the batch's longest context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tameshi.model.config import ModelConfig

if TYPE_CHECKING:
    from tameshi.kernels.awq_x16 import QuantizedX


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * torch.finfo(dtype).bits // 8


@dataclass
class _Prefill:
    q_start: int
    q_len: int
    slots: torch.Tensor  # [ctx_len] slot of every context position
    mask: torch.Tensor | None  # [q_len, ctx_len], None when plain causal from position 0


@dataclass
class _Decode:
    q_index: torch.Tensor | None  # [B] rows of the flattened batch; None when the batch is all decodes
    blocks: torch.Tensor  # [B, max_blocks] block tables, padded with block 0 (int32 for the kernel)
    mask: torch.Tensor | None  # [B, 1, 1, max_blocks * block_size] True where attended (SDPA only)
    lens: torch.Tensor | None  # [B] int32 context lengths (the Triton kernel only)


class PagedKVCache:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, device, dtype) -> None:
        # One block more than the block manager hands out: a scratch block where padding rows of a
        # CUDA-graph batch write their K/V.
        shape = (config.n_layers, (num_blocks + 1) * block_size, config.n_kv_heads, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.scratch_slot = num_blocks * block_size
        self.device = device
        # decode rows through the Triton paged kernel (tameshi.kernels.paged_attention)
        self.decode_kernel = torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16)
        self.batch_invariant = False  # set by the engine (EngineConfig.batch_invariant)
        self._slot_mapping: torch.Tensor | None = None
        self._prefills: list[_Prefill] = []
        self._decode: _Decode | None = None

    def slots_for(self, block_table: list[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [block_table[p // bs] * bs + p % bs for p in range(start, end)]

    def prepare(self, spans: list[tuple[list[int], int, int]]) -> None:
        """spans: per sequence (block_table, first new position, number of new tokens), in batch order."""
        new_slots: list[int] = []
        self._prefills, decodes = [], []
        q_start = 0
        for table, start, n in spans:
            new_slots += self.slots_for(table, start, start + n)
            if n == 1 and (self.decode_kernel or not self.batch_invariant):
                # decodes need only their block table, not a slot per context position
                decodes.append((q_start, table[: -(-(start + 1) // self.block_size)], start + 1))
            else:
                mask = None
                if start > 0:  # queries see the cached context, then the new tokens causally
                    q_pos = torch.arange(start, start + n, device=self.device)
                    mask = torch.arange(start + n, device=self.device)[None, :] <= q_pos[:, None]
                slots = torch.tensor(self.slots_for(table, 0, start + n), device=self.device)
                self._prefills.append(_Prefill(q_start, n, slots, mask))
            q_start += n
        self._slot_mapping = torch.tensor(new_slots, device=self.device)
        self._decode = self._prepare_decode(decodes, all_decode=not self._prefills) if decodes else None

    def _prepare_decode(self, decodes: list[tuple[int, list[int], int]], all_decode: bool) -> _Decode:
        # Whole blocks are gathered (few, contiguous copies) rather than single slots.
        width = max(len(table) for _, table, _ in decodes)
        kernel = self.decode_kernel
        blocks = torch.zeros(len(decodes), width, dtype=torch.int32 if kernel else torch.long)
        for row, (_, table, _) in enumerate(decodes):
            blocks[row, : len(table)] = torch.tensor(table)
        q_index = None if all_decode else torch.tensor([q for q, _, _ in decodes], device=self.device)
        lens = torch.tensor([ctx_len for _, _, ctx_len in decodes], dtype=torch.int32)
        if kernel:
            return _Decode(q_index, blocks.to(self.device), None, lens.to(self.device))
        mask = torch.arange(width * self.block_size)[None, :] < lens[:, None]
        return _Decode(q_index, blocks.to(self.device), mask[:, None, None, :].to(self.device), None)

    def attend_x16(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, QuantizedX | None]:
        d = self._decode
        if d is None or d.lens is None or d.q_index is not None or self._prefills:
            return self.attend(layer, q, k, v), None  # no kernel of this step writes the quantized form
        from tameshi.kernels.paged_attention import paged_decode_attention_x16

        k_cache, v_cache = self._store(layer, k, v)  # decodes alone, on the kernel: as a graph replays it
        return paged_decode_attention_x16(q, k_cache, v_cache, d.blocks, d.lens, self.block_size)

    def _store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_cache, v_cache = self.k[layer], self.v[layer]
        if k.is_cuda:  # one kernel for both
            from tameshi.kernels.fused import store_kv

            store_kv(k, v, k_cache, v_cache, self._slot_mapping)
        else:
            k_cache.index_copy_(0, self._slot_mapping, k)
            v_cache.index_copy_(0, self._slot_mapping, v)
        return k_cache, v_cache

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self._store(layer, k, v)
        out = torch.empty_like(q)
        gqa = q.shape[1] != k.shape[1]
        for p in self._prefills:
            qs = q[p.q_start : p.q_start + p.q_len].transpose(0, 1)[None]
            keys = k_cache[p.slots].transpose(0, 1)[None]
            values = v_cache[p.slots].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(
                qs, keys, values, attn_mask=p.mask, is_causal=p.mask is None, enable_gqa=gqa
            )
            out[p.q_start : p.q_start + p.q_len] = o[0].transpose(0, 1)
        d = self._decode
        if d is not None and d.lens is not None:
            from tameshi.kernels.paged_attention import paged_decode_attention

            qs = q if d.q_index is None else q[d.q_index]
            o = paged_decode_attention(qs, k_cache, v_cache, d.blocks, d.lens, self.block_size)
            if d.q_index is None:
                return o
            out[d.q_index] = o
        elif d is not None:
            b, width = d.blocks.shape
            qs = (q if d.q_index is None else q[d.q_index])[:, :, None]  # [B, heads, 1, dim]
            paged_k = k_cache.view(-1, self.block_size, *k_cache.shape[1:])
            paged_v = v_cache.view(-1, self.block_size, *v_cache.shape[1:])
            keys = paged_k[d.blocks].view(b, width * self.block_size, *k_cache.shape[1:]).transpose(1, 2)
            values = paged_v[d.blocks].view(b, width * self.block_size, *v_cache.shape[1:]).transpose(1, 2)
            # Past a row's length sit other requests' slots (padding points at block 0) or a freed block's
            # old values: masked, but SDPA adds the mask to the scores and weighs the values by 0, and
            # NaN + -inf and 0 x NaN are NaN, so one request's NaN would reach the rows beside it. The
            # Triton kernel does not load them at all.
            gone = ~d.mask[:, :, 0, :, None]
            keys, values = keys.masked_fill(gone, 0.0), values.masked_fill(gone, 0.0)
            o = F.scaled_dot_product_attention(qs, keys, values, attn_mask=d.mask, enable_gqa=gqa)[:, :, 0]
            if d.q_index is None:
                return o
            out[d.q_index] = o
        return out
