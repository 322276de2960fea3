"""Continuous batching: which sequences run this step, and how many of their tokens.

Running sequences go first (decode steps, then the rest of chunked prefills), then waiting ones are
admitted while the token budget, the sequence budget and the free KV blocks allow. When a running
sequence needs a block and none is free, the most recently admitted sequence is preempted: its
blocks are freed and it goes back to the front of the queue, to be recomputed later (never a crash).
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
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if not self._ensure_slot(seq):
                break  # it had to preempt itself, the last one running
            n = min(len(seq) - seq.num_computed_tokens, budget)
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            budget -= n
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)
            self.running.append(seq)
            n = min(len(seq) - seq.num_computed_tokens, budget)
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            budget -= n
        return batch

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
