"""Start the ranks of a tensor-parallel model: joined under torchrun, or spawned by tameshi itself.

Under torchrun (RANK / WORLD_SIZE in the environment) every rank runs the same command, and the
ranks find each other through env://. Otherwise the calling process is rank 0 and starts the others
as `python -m tameshi.parallel.follower` on this host. Every rank loads its own shard first and
meets the others afterwards, so loading runs in parallel; while it waits, rank 0 watches its
children, so a follower that dies while loading is an error here, not a hang.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from tameshi.errors import InvalidRequestError, TameshiError
from tameshi.parallel.group import TensorParallel

SPAWNED = "TAMESHI_TP_SPAWNED"  # set in the environment of the followers tameshi starts itself
START_TIMEOUT = timedelta(minutes=30)  # loading a large shard can take minutes


class Launch:
    """This process's rank, and for a rank 0 that spawned the others, their processes."""

    def __init__(self, world: int, device: torch.device | None) -> None:
        if dist.is_initialized():
            raise InvalidRequestError("a tensor-parallel model is already running in this process")
        self.procs: list[subprocess.Popen] = []
        self.store: dist.TCPStore | None = None
        self.under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if self.under_torchrun:
            rank, env_world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            if env_world != world:
                raise InvalidRequestError(f"--tp {world} but {env_world} processes were started")
            local = int(os.environ.get("LOCAL_RANK", rank))
        else:
            rank = local = 0
        self.spawned = bool(os.environ.get(SPAWNED))
        self.tp = TensorParallel(rank, world, _rank_device(device, local, world))
        self.tp.dead_peer = self._dead_follower

    def spawn(self, model: str, dtype: str | None) -> None:
        """Rank 0 outside torchrun: start ranks 1 .. world-1 on this host, loading `model`."""
        port = _free_port()
        self.store = dist.TCPStore(
            "127.0.0.1", port, self.tp.world, is_master=True, timeout=START_TIMEOUT, wait_for_workers=False
        )
        device = self.tp.device.type
        for rank in range(1, self.tp.world):
            env = os.environ | {
                SPAWNED: "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(self.tp.world),
            }  # fmt: skip
            cmd = [sys.executable, "-m", "tameshi.parallel.follower", model, device, dtype or ""]
            # stdout carries rank 0's answers; followers write only errors (stderr)
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))

    def connect(self) -> TensorParallel:
        """Meet the other ranks (after this rank's shard is loaded)."""
        tp = self.tp
        if self.procs:
            self._wait_for_followers()
        elif self.spawned:
            addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            self.store = dist.TCPStore(addr, port, tp.world, is_master=False, timeout=START_TIMEOUT)
            self.store.set(f"tameshi/loaded/{tp.rank}", "1")
        tp.connect(self.store)
        if tp.is_leader:
            atexit.register(self.shutdown)
        return tp

    def _wait_for_followers(self) -> None:
        keys = [f"tameshi/loaded/{r}" for r in range(1, self.tp.world)]
        while not self.store.check(keys):
            for rank, proc in enumerate(self.procs, start=1):
                if proc.poll() is not None:
                    self.abort()
                    raise TameshiError(
                        f"tensor-parallel rank {rank} exited with code {proc.returncode} while loading"
                    )
            time.sleep(0.05)

    def _dead_follower(self) -> str | None:
        for rank, proc in enumerate(self.procs, start=1):
            if proc.poll() is not None:
                return f"tensor-parallel rank {rank} exited with code {proc.returncode}"
        return None

    def abort(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs = []

    def shutdown(self) -> None:
        """Rank 0: tell the followers to stop, wait for the ones it spawned, leave the groups."""
        atexit.unregister(self.shutdown)
        if self.tp.control is not None and self.tp.broken is None and self._dead_follower() is None:
            with contextlib.suppress(Exception):  # a follower gone since needs no goodbye
                self.tp.send(None)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []
        self.tp.close()


def _rank_device(device: torch.device | None, local_rank: int, world: int) -> torch.device:
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        return device
    if torch.cuda.device_count() < world:
        raise InvalidRequestError(
            f"--tp {world} needs {world} GPUs; this machine has {torch.cuda.device_count()}"
        )
    return torch.device("cuda", local_rank)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
