"""Continuous batching: which sequences run this step, and how many of their tokens.

Running sequences go first (decode steps, then the rest of chunked prefills), then waiting ones are
admitted while the token budget, the sequence budget and the free KV blocks allow. When a running
sequence needs a block and none is free, the most recently admitted sequence is preempted: its
blocks are freed and it goes back to the front of the queue, to be recomputed later (never a crash).

`fixed_chunks` (batch-invariant engines): a prompt is cut only at multiples of the token budget,
wherever it is admitted, as a solo run cuts it; a chunk that does not fit what is left of a step's
budget waits for the next step, but the first prefill chunk of a step always runs (the step then
holds at most the budget plus its decodes). Attention over a chunk sums in an order that depends
on where the chunk starts, so a prompt chunked as its solo run chunks it gets the same numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tameshi.engine.block_manager import BlockManager
from tameshi.engine.sequence import Sequence


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # sequences in one step
    max_num_batched_tokens: int = 2048  # tokens in one step; long prompts are prefilled in chunks of this
    fixed_chunks: bool = False  # prompts cut at multiples of max_num_batched_tokens only (see above)


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)  # tokens each computes this step

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._prefilled = False

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, seq_id: int) -> Sequence | None:
        for seq in self.running:
            if seq.seq_id == seq_id:
                self.running.remove(seq)
                self.blocks.free_seq(seq)
                return seq
        for seq in self.waiting:
            if seq.seq_id == seq_id:
                self.waiting.remove(seq)
                return seq
        return None

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_seq(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        self._prefilled = False  # a prefill chunk is in this step (fixed_chunks)
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if not self._ensure_slot(seq):
                break  # it had to preempt itself, the last one running
            i += 1
            budget -= self._add(batch, seq, self._tokens(seq, budget))
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq):
                break
            if self.config.fixed_chunks and not self._tokens(seq, budget):
                break  # its first chunk waits for a step with room (no prefix cache: nothing computed yet)
            self.waiting.popleft()
            self.blocks.allocate(seq)
            self.running.append(seq)
            budget -= self._add(batch, seq, self._tokens(seq, budget))
        return batch

    def _tokens(self, seq: Sequence, budget: int) -> int:
        """How many of `seq`'s uncomputed tokens this step computes (0: none, it waits)."""
        left = len(seq) - seq.num_computed_tokens
        if not self.config.fixed_chunks or left == 1:
            return min(left, budget)
        chunk = self.config.max_num_batched_tokens
        n = min(left, chunk - seq.num_computed_tokens % chunk)  # up to the next multiple of the budget
        return 0 if n > budget and self._prefilled else n

    def _add(self, batch: ScheduledBatch, seq: Sequence, n: int) -> int:
        if n:
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            self._prefilled |= n > 1
        return n

    def _ensure_slot(self, seq: Sequence) -> bool:
        """A slot for the newest token of `seq`, preempting from the back while none is free."""
        while len(seq) > len(seq.block_table) * self.blocks.block_size and not self.blocks.num_free_blocks:
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.append_slot(seq)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_seq(seq)
        seq.preempted += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
