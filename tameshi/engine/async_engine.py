"""Runs an `Engine` on one thread and streams its outputs to asyncio tasks and to threads.

The engine is not thread-safe, so one thread owns it: a worker thread of its own (`start`), or the
thread that calls `run_here`. Consumers reach that thread only through a command queue, and it
answers each request on the request's own queue. A consumer that goes away
(client disconnect, task cancelled, generator closed) sends an abort, which frees the request's KV
blocks; a bad request fails only itself; a crash in `step` fails every request loudly and turns
`is_alive` False so that a health check sees it (docs: shared/reference/reliability.md §0).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tameshi.engine.sequence import StepOutput
from tameshi.errors import TameshiError

if TYPE_CHECKING:
    from tameshi.engine.engine import Engine
    from tameshi.sampling_params import SamplingParams

log = logging.getLogger("tameshi")


class EngineDeadError(TameshiError):
    """The engine's worker thread has stopped (shut down or crashed), so no request can run on it."""


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    # Outputs go to an asyncio.Queue through `loop`, or, when loop is None, to a thread-safe queue.
    loop: asyncio.AbstractEventLoop | None
    out: asyncio.Queue | queue.SimpleQueue
    engine_id: int | None = None  # set by the worker once the engine has accepted the request


@dataclass(frozen=True)
class _Abort:
    request: _Request


_STOP = object()


def _put_all(batch: list[tuple[_Request, StepOutput | BaseException]]) -> None:
    # Runs on the consumer's loop: asyncio.Queue may only be touched from there.
    for req, item in batch:
        req.out.put_nowait(item)


class AsyncEngine:
    def __init__(self, engine: Engine, *, stall_timeout_s: float = 30.0) -> None:
        self._engine = engine
        self._stall_timeout_s = stall_timeout_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()  # _Request | _Abort | _STOP
        # Guards _dead together with putting a request on _commands, so that no request can be
        # queued after the worker has drained the queue for the last time.
        self._lock = threading.Lock()
        self._dead: str | None = None  # why no request can run any more
        self._dead_cause: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._owns_thread = False  # started by start(), so stop() may join it
        # Owned by the worker thread once it runs.
        self._requests: dict[int, _Request] = {}  # engine id -> request in flight
        self._pending: deque = deque()  # commands taken off the queue, not yet handled
        # Written by the worker, read anywhere: single reference assignments, atomic under the GIL.
        self._stats: Any = engine.stats()  # the thread does not exist yet, so this call is safe
        self._idle = False
        self._last_beat = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the engine on a worker thread of its own."""
        self._claim(threading.Thread(target=self._run, name="tameshi-engine", daemon=True))
        self._owns_thread = True
        self._thread.start()

    def run_here(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run the engine on the calling thread until `stop()` (from any thread); `on_ready` is
        called first, once requests can be queued. Ctrl-C (KeyboardInterrupt) ends it as `stop()`
        does, then is raised again.

        For a process whose main thread has nothing else to do (`tameshi serve`): on CPU, torch's
        matmuls ran 2-3x slower on a second thread once the thread that loaded the model had used
        them (libgomp; benchmarks/results/serve-load-cpu-2026-11-30.md), so the loading thread
        should be the one that steps the engine."""
        self._claim(threading.current_thread())
        if on_ready is not None:
            on_ready()
        self._run()

    def _claim(self, thread: threading.Thread) -> None:
        with self._lock:
            if self._thread is not None or self._dead is not None:
                raise RuntimeError("an AsyncEngine runs once (start() or run_here())")
            self._last_beat = time.monotonic()
            self._thread = thread

    def stop(self) -> None:
        """Fail what is still running with EngineDeadError and free its blocks; join the worker
        thread if `start()` made one."""
        with self._lock:
            if self._dead is None:
                self._dead = "the engine was stopped"
                self._commands.put(_STOP)
            thread = self._thread
        if self._owns_thread and thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def is_alive(self) -> bool:
        """For health checks: False once the worker crashed or stopped, or while one step stalls."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._dead is not None:
            return False
        return self._idle or time.monotonic() - self._last_beat < self._stall_timeout_s

    def stats(self) -> Any:
        """The engine's stats as of the worker's last loop iteration (Engine.stats()'s dataclass)."""
        return self._stats

    # -- consumers ---------------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[StepOutput]:
        """Yield the request's outputs; the last has finish_reason. Leaving early aborts it.

        The request is submitted on the first iteration. Close the generator when you stop early
        (`async with contextlib.aclosing(...)`), or the abort waits for garbage collection.
        """
        out: asyncio.Queue = asyncio.Queue()
        req = self._submit(prompt_ids, params, asyncio.get_running_loop(), out)
        done = False
        try:
            while not done:
                item = await out.get()
                done = isinstance(item, BaseException) or item.finish_reason is not None
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Also on CancelledError / GeneratorExit, which `except Exception` would miss.
            if not done:
                self._commands.put(_Abort(req))

    def stream_sync(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[StepOutput]:
        """`generate` for threads without an event loop; blocks between outputs; close() aborts."""
        out: queue.SimpleQueue = queue.SimpleQueue()
        req = self._submit(prompt_ids, params, None, out)
        done = False
        try:
            while not done:
                item = out.get()
                done = isinstance(item, BaseException) or item.finish_reason is not None
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not done:
                self._commands.put(_Abort(req))

    def _submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        loop: asyncio.AbstractEventLoop | None,
        out: asyncio.Queue | queue.SimpleQueue,
    ) -> _Request:
        req = _Request(list(prompt_ids), params, loop, out)
        with self._lock:
            if self._dead is not None:
                raise self._dead_error()
            if self._thread is None:
                raise RuntimeError("call AsyncEngine.start() or run_here() before submitting requests")
            self._commands.put(req)
        return req

    def _dead_error(self) -> EngineDeadError:
        err = EngineDeadError(self._dead or "the engine is not running")
        err.__cause__ = self._dead_cause
        return err

    # -- the worker thread -------------------------------------------------------------------------
    def _run(self) -> None:
        cause: BaseException | None = None
        interrupted: KeyboardInterrupt | None = None
        try:
            self._serve()
            for engine_id in self._requests:  # stopped while requests ran: free their blocks
                self._engine.abort(engine_id)
        except KeyboardInterrupt as exc:  # Ctrl-C on run_here's thread: a stop, the process is ending
            interrupted = exc
        except BaseException as exc:  # whatever it was, nobody may wait forever on a dead worker
            log.exception("the engine worker crashed; failing every request in flight")
            cause = exc
        with self._lock:
            if cause is not None:
                self._dead = f"the engine crashed ({type(cause).__name__}: {cause}); restart it"
                self._dead_cause = cause
            elif self._dead is None:
                self._dead = "the engine was stopped"
            self._take_commands(block=False)  # the last drain: _dead now refuses new requests
        victims = list(self._requests.values())
        victims += [c for c in self._pending if isinstance(c, _Request)]
        self._requests.clear()
        self._pending.clear()
        self._send([(req, self._dead_error()) for req in victims], abort_unreachable=False)
        if interrupted is not None:
            raise interrupted

    def _serve(self) -> None:
        engine = self._engine
        while True:
            # Block only when there is nothing to step: an idle engine costs no CPU.
            self._take_commands(block=not engine.has_unfinished())
            while self._pending:
                cmd = self._pending.popleft()
                if cmd is _STOP:
                    return
                if isinstance(cmd, _Abort):
                    self._abort(cmd.request)
                else:
                    self._add(cmd)
            if engine.has_unfinished():
                self._deliver(engine.step())
                self._fail(engine.take_failures())
            self._stats = engine.stats()
            self._last_beat = time.monotonic()

    def _take_commands(self, block: bool) -> None:
        if block:
            self._idle = True
            cmd = self._commands.get()
            self._last_beat = time.monotonic()  # before clearing _idle, so is_alive never flickers
            self._idle = False
            self._pending.append(cmd)
        while True:
            try:
                self._pending.append(self._commands.get_nowait())
            except queue.Empty:
                return

    def _add(self, req: _Request) -> None:
        try:
            req.engine_id = self._engine.add_request(req.prompt_ids, req.params)
        except Exception as exc:  # a bad request fails itself, never the engine (reliability.md §0.2)
            if not isinstance(exc, TameshiError):
                log.exception("add_request failed unexpectedly; failing that request only")
            self._send([(req, exc)])
            return
        self._requests[req.engine_id] = req

    def _abort(self, req: _Request) -> None:
        # Only what is still in flight: a refused or finished request holds no blocks, and an
        # abort may arrive twice (its loop closed, then the consumer's own abort).
        if req.engine_id is not None and self._requests.pop(req.engine_id, None) is req:
            self._engine.abort(req.engine_id)

    def _deliver(self, outputs: list[tuple[int, StepOutput]]) -> None:
        items: list[tuple[_Request, StepOutput | BaseException]] = []
        for engine_id, out in outputs:
            req = self._requests.get(engine_id)
            if req is None:
                continue
            if out.finish_reason is not None:
                del self._requests[engine_id]
            items.append((req, out))
        self._send(items)

    def _fail(self, failures: list[tuple[int, Exception]]) -> None:
        """Requests the engine failed alone in a step (it aborted them): each gets its error."""
        items = [(self._requests.pop(i), exc) for i, exc in failures if i in self._requests]
        self._send(items)

    def _send(
        self, items: list[tuple[_Request, StepOutput | BaseException]], abort_unreachable: bool = True
    ) -> None:
        # One wake-up per event loop per step, not one per token: hundreds of streams share a loop.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for req, item in items:
            if req.loop is None:
                req.out.put(item)
            else:
                by_loop.setdefault(req.loop, []).append((req, item))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                if abort_unreachable:
                    for req, _ in batch:
                        self._abort(req)
