"""The ranks of one tensor-parallel model: who this process is, and the collectives its layers call.

Two process groups: the data group (NCCL on CUDA, gloo on CPU) carries the all-reduces and the
logits gather inside a forward; a gloo group carries rank 0's step plans. The plans go over gloo even
on CUDA because followers wait on them between requests, possibly for hours: a CPU socket waits
idle, where an NCCL broadcast would spin a GPU kernel and trip NCCL's watchdog timeout.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tameshi.errors import TensorParallelError, first_line

# Followers may wait this long for rank 0's next step (an idle chat or server).
IDLE_TIMEOUT = timedelta(days=30)
# torch 2.13 renamed all_gather_into_tensor (and warns on the old name); older torch has only that one
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class TensorParallel:
    rank: int
    world: int
    device: torch.device
    control: Any = field(default=None, repr=False)  # the gloo group for step plans, once connected
    # run before the groups go: NCCL cannot destroy a communicator that a live CUDA graph captured
    before_close: list[Callable[[], None]] = field(default_factory=list, repr=False)
    # rank 0 that started the others: says which one has exited, if one has (else None)
    dead_peer: Callable[[], str | None] = field(default=lambda: None, repr=False)
    broken: str | None = field(default=None, repr=False)  # why the ranks can no longer step together

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def connect(self, store: dist.Store | None = None) -> None:
        """Join the process groups (all ranks at once): from `store`, or from torchrun's env://."""
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if backend == "nccl":
            # NVLink SHARP multicast stays off: the lent multi-GPU machines require it (KINDS.md).
            os.environ["NCCL_NVLS_ENABLE"] = "0"
            torch.cuda.set_device(self.device)
        init = {"store": store} if store is not None else {"init_method": "env://"}
        dist.init_process_group(backend, rank=self.rank, world_size=self.world, **init)
        self.control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)

    def close(self) -> None:
        if self.broken is not None:
            # A dead peer may have left this GPU inside a collective: synchronizing (to release
            # graphs) or destroying an NCCL group could wait forever. Over gloo (CPU) nothing waits.
            self.before_close.clear()
            self.control = None
            if self.device.type == "cpu" and dist.is_initialized():
                dist.destroy_process_group()
            return
        while self.before_close:
            self.before_close.pop()()
        if dist.is_initialized():
            dist.destroy_process_group()
        self.control = None

    # -- inside a forward (every rank) ---------------------------------------------------------------
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the ranks, in place."""
        dist.all_reduce(x)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Each rank's x [.., n] side by side in rank order: [.., world * n]."""
        # one collective into one buffer (a list of outputs costs a copy per rank after it); the
        # output is the ranks' rows one after another, the form every backend (gloo too) accepts
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        gathered = torch.empty(self.world * rows.shape[0], rows.shape[1], dtype=x.dtype, device=x.device)
        _all_gather_single(gathered, rows)
        by_rank = gathered.view(self.world, *rows.shape).transpose(0, 1)  # [rows, world, n]
        return by_rank.reshape(*x.shape[:-1], self.world * x.shape[-1])

    # -- step plans (rank 0 -> the others) -----------------------------------------------------------
    @contextmanager
    def whole_step(self) -> Iterator[None]:
        """Rank 0, around each step: Ctrl-C is held back until the step's collectives are done, then
        raised (a step left halfway, as chat stops an answer with Ctrl-C, would leave the followers
        inside an all-reduce that rank 0 never joins). A step that fails breaks the model for good:
        it raises TensorParallelError, saying which rank died where that is known."""
        if self.broken is not None:
            raise TensorParallelError(self.broken)
        try:
            with self._sigint_deferred():
                yield
        except (KeyboardInterrupt, TensorParallelError):
            raise
        except Exception as e:
            dead = self.dead_peer()
            self.broken = (
                f"{dead}; the model cannot run without it (load it again)"
                if dead is not None
                else f"a tensor-parallel step failed ({type(e).__name__}: {first_line(e)}); the ranks are out of step"
            )
            raise TensorParallelError(self.broken) from e

    @contextmanager
    def _sigint_deferred(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach only the main thread
            return
        caught: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt

    def send(self, message: Any) -> None:
        """Rank 0: hand `message` to every follower (a pickled object over the gloo group)."""
        dist.broadcast_object_list([message], src=0, group=self.control)

    def receive(self) -> Any:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]
