"""Paged KV blocks: a free list, reference counts, and a prefix cache of full blocks.

A full block is known by a hash chained over every token before its end, so two sequences share a
block only if they share the whole prefix up to it. A hash hit is verified against the block's token
ids (hashes can collide), and a block is offered for sharing only once its K/V are really computed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from tameshi.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full and its K/V are computed
    token_ids: tuple[int, ...] = ()


def chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("need at least one block of at least one token")
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in eviction order: the least recently freed first. A free block may still hold a
        # cached prefix; it is reused for other tokens only when nothing older is left.
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # chain hash -> block id
        self.enable_prefix_caching = enable_prefix_caching
        self.prefix_queried_tokens = 0
        self.prefix_hit_tokens = 0

    # -- accounting ------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return len(self.blocks) - len(self.free)

    def blocks_needed(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    # -- admission -------------------------------------------------------------------------------
    def _prefix_hits(self, seq: Sequence) -> list[int]:
        """Cached blocks covering the prompt's leading full blocks (never the very last token)."""
        if not self.enable_prefix_caching:
            return []
        hits, parent = [], None
        # At least one token must be computed, to have logits to sample from.
        n_full = (len(seq) - 1) // self.block_size
        for i in range(n_full):
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            parent = chain_hash(parent, tokens)
            block_id = self.cached.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._prefix_hits(seq)
        reused_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        need = self.blocks_needed(len(seq)) - len(hits)
        return need <= self.num_free_blocks - reused_free

    def allocate(self, seq: Sequence) -> None:
        """Give `seq` blocks for all its tokens, sharing cached prefix blocks; sets num_cached_tokens."""
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} already has blocks")
        hits = self._prefix_hits(seq)
        for block_id in hits:
            self._take(block_id)
        seq.block_table = list(hits)
        for _ in range(self.blocks_needed(len(seq)) - len(hits)):
            seq.block_table.append(self._take(self._evict()))
        seq.num_cached_tokens = seq.num_computed_tokens = len(hits) * self.block_size
        self.prefix_queried_tokens += len(seq)
        self.prefix_hit_tokens += seq.num_cached_tokens

    # -- decode ----------------------------------------------------------------------------------
    def can_append(self, seq: Sequence) -> bool:
        """Room for the token about to be appended to `seq`."""
        return len(seq) < len(seq.block_table) * self.block_size or self.num_free_blocks > 0

    def append_slot(self, seq: Sequence) -> None:
        """Make sure the last token of `seq` has a slot (call after appending it)."""
        if len(seq) > len(seq.block_table) * self.block_size:
            seq.block_table.append(self._take(self._evict()))

    def commit(self, seq: Sequence) -> None:
        """Offer the full blocks whose K/V are now computed to the prefix cache. Each block is hashed
        once: the sequence keeps the chain up to its last committed block, so a decode step costs the
        same at 100 or 10,000 tokens."""
        if not self.enable_prefix_caching:
            return
        hashes = seq.block_hashes
        for i in range(len(hashes), seq.num_computed_tokens // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            parent = chain_hash(hashes[-1] if hashes else None, tokens)
            hashes.append(parent)
            block = self.blocks[seq.block_table[i]]
            if block.hash == parent:
                continue
            if parent in self.cached:  # an identical block exists already: keep that one shared
                continue
            block.hash, block.token_ids = parent, tokens
            self.cached[parent] = block.block_id

    def forget(self, seq: Sequence) -> None:
        """Take the blocks `seq` computed itself out of the prefix cache (call before freeing it): its
        K/V are not to be shared, e.g. NaN (Engine.step, ModelOutputError). Prefix hits stay cached."""
        for block_id in seq.block_table[seq.num_cached_tokens // self.block_size :]:
            block = self.blocks[block_id]
            if block.hash is not None and self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.hash, block.token_ids = None, ()

    def free_seq(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):  # the tail first: evicted before shared prefixes
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = seq.num_cached_tokens = 0

    # -- internals -------------------------------------------------------------------------------
    def _evict(self) -> int:
        if not self.free:
            raise RuntimeError("no free KV block (the scheduler should have checked)")
        block_id = next(iter(self.free))
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash, block.token_ids = None, ()
        return block_id

    def _take(self, block_id: int) -> int:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self.free.pop(block_id)
        block.ref_count += 1
        return block_id
