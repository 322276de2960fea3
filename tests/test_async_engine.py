"""AsyncEngine against a deterministic fake engine: streaming, cancellation, bad requests, crashes, threads."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tameshi.engine.async_engine import AsyncEngine, EngineDeadError
from tameshi.engine.sequence import StepOutput
from tameshi.errors import InvalidRequestError, PromptTooLongError

FOREVER = None  # max_tokens for a request that never finishes on its own


@dataclass(frozen=True)
class FakeParams:
    max_tokens: int | None = 5


@dataclass(frozen=True)
class FakeStats:
    running: int


class FakeEngine:
    """Step k of the request with prompt [tag] emits token tag*100+k; it finishes after max_tokens.

    Like the real Engine it is not thread-safe, so it fails loudly when called from two threads at
    once; `step_hook(self)` runs at the start of each step (to sleep, or to raise a "bug").
    """

    def __init__(self, step_hook: Callable[[FakeEngine], None] | None = None) -> None:
        self.step_hook = step_hook
        self.running: dict[int, list] = {}  # engine id -> [tag, max_tokens, emitted so far]
        self.tags: dict[int, int] = {}  # engine id -> tag, for every request ever added
        self.aborted: list[int] = []
        self.steps = 0
        self.calls = 0
        self.threads: set[int] = set()
        self._ids = itertools.count()
        self._busy = threading.Lock()

    @contextmanager
    def _owned(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise AssertionError("FakeEngine called from two threads at once")
        self.threads.add(threading.get_ident())
        self.calls += 1
        try:
            yield
        finally:
            self._busy.release()

    def add_request(self, prompt_ids: list[int], params: FakeParams) -> int:
        with self._owned():
            if not prompt_ids:
                raise InvalidRequestError("the prompt is empty")
            if len(prompt_ids) > 10:
                raise PromptTooLongError("the prompt does not fit the context window")
            engine_id = next(self._ids)
            self.running[engine_id] = [prompt_ids[0], params.max_tokens, 0]
            self.tags[engine_id] = prompt_ids[0]
            return engine_id

    def step(self) -> list[tuple[int, StepOutput]]:
        with self._owned():
            self.steps += 1
            if self.step_hook is not None:
                self.step_hook(self)
            outputs = []
            for engine_id, state in list(self.running.items()):
                tag, max_tokens, k = state
                state[2] += 1
                finish = "length" if state[2] == max_tokens else None
                outputs.append((engine_id, StepOutput(f"{tag}.{k} ", [tag * 100 + k], finish)))
                if finish:
                    del self.running[engine_id]
            return outputs

    def take_failures(self) -> list:
        return []  # this fake fails whole steps only (step_hook)

    def abort(self, request_id: int) -> None:
        with self._owned():
            self.aborted.append(request_id)
            self.running.pop(request_id, None)

    def has_unfinished(self) -> bool:
        with self._owned():
            return bool(self.running)

    def stats(self) -> FakeStats:
        return FakeStats(running=len(self.running))


@contextmanager
def started(fake: FakeEngine, **kwargs: float) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(fake, **kwargs)  # type: ignore[arg-type]
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def check_complete(tag: int, n: int, outs: list[StepOutput]) -> None:
    assert [o.token_ids for o in outs] == [[tag * 100 + k] for k in range(n)]
    assert "".join(o.text for o in outs) == "".join(f"{tag}.{k} " for k in range(n))
    assert [o.finish_reason for o in outs] == [None] * (n - 1) + ["length"]


def test_many_concurrent_consumers_get_complete_outputs_in_order():
    fake = FakeEngine()
    with started(fake) as engine:

        async def consume(tag: int) -> list[StepOutput]:
            return [o async for o in engine.generate([tag], FakeParams(1 + tag % 8))]

        async def main() -> list[list[StepOutput]]:
            return await asyncio.gather(*(consume(tag) for tag in range(200)))

        results = asyncio.run(main())
        wait_until(lambda: engine.stats().running == 0)
    for tag, outs in enumerate(results):
        check_complete(tag, 1 + tag % 8, outs)
    assert not fake.running and not fake.aborted
    assert len(fake.threads) == 1 and threading.get_ident() not in fake.threads


def test_consumers_that_leave_early_abort_their_requests():
    rng = random.Random(0)
    fake = FakeEngine(step_hook=lambda _: time.sleep(0.0002))
    with started(fake) as engine:

        async def to_the_end(tag: int) -> list[StepOutput]:
            return [o async for o in engine.generate([tag], FakeParams(1 + tag % 8))]

        async def closes_after(tag: int, k: int) -> str:
            stream = engine.generate([tag], FakeParams(FOREVER))
            for _ in range(k):
                await anext(stream)
            await stream.aclose()
            return "closed"

        async def reads_until_cancelled(tag: int, k: int, reached: asyncio.Event) -> None:
            if k == 0:
                reached.set()  # cancelled while waiting for its first output
            got = 0
            async for _ in engine.generate([tag], FakeParams(FOREVER)):
                got += 1
                if got == k:
                    reached.set()
            raise AssertionError("a request that never finishes ended")

        async def cancel_when(task: asyncio.Task, reached: asyncio.Event) -> None:
            await reached.wait()
            task.cancel()

        async def main() -> tuple[list, set[int]]:
            coros, leavers, watchers = [], set(), []
            for tag in range(200):
                r = rng.random()
                if r < 0.15:
                    coros.append(closes_after(tag, rng.randint(1, 5)))
                elif r < 0.30:
                    reached = asyncio.Event()
                    task = asyncio.create_task(reads_until_cancelled(tag, rng.randint(0, 5), reached))
                    watchers.append(asyncio.create_task(cancel_when(task, reached)))
                    coros.append(task)
                else:
                    coros.append(to_the_end(tag))
                    continue
                leavers.add(tag)
            results = await asyncio.gather(*coros, return_exceptions=True)
            await asyncio.gather(*watchers)
            return results, leavers

        results, leavers = asyncio.run(main())
        # Every leaver's request runs forever, so only its abort can empty the engine.
        wait_until(lambda: not fake.running)
        wait_until(lambda: engine.stats().running == 0)
    assert 40 < len(leavers) < 80
    for tag, result in enumerate(results):
        if tag in leavers:
            assert result == "closed" or isinstance(result, asyncio.CancelledError)
        else:
            check_complete(tag, 1 + tag % 8, result)
    assert {fake.tags[i] for i in fake.aborted} == leavers
    assert sorted(fake.aborted) == sorted(i for i, tag in fake.tags.items() if tag in leavers)


def test_a_stream_left_open_is_aborted_when_its_loop_shuts_down():
    fake = FakeEngine()
    kept = []
    with started(fake) as engine:

        async def main() -> None:
            stream = engine.generate([7], FakeParams(FOREVER))
            await anext(stream)
            kept.append(stream)  # never closed here: asyncio.run's shutdown_asyncgens must do it

        asyncio.run(main())
        wait_until(lambda: not fake.running)
    assert [fake.tags[i] for i in fake.aborted] == [7]


def test_a_stream_whose_loop_closed_is_aborted_on_its_next_output():
    fake = FakeEngine()
    loop = asyncio.new_event_loop()
    with started(fake) as engine:
        stream = engine.generate([9], FakeParams(FOREVER))
        loop.run_until_complete(anext(stream))
        loop.close()  # without shutdown_asyncgens: the consumer never sends its abort
        wait_until(lambda: not fake.running)
        del stream
    assert [fake.tags[i] for i in fake.aborted] == [9]


def test_a_bad_request_fails_only_its_own_consumer():
    fake = FakeEngine()
    with started(fake) as engine:

        async def consume(prompt: list[int]) -> list[StepOutput]:
            return [o async for o in engine.generate(prompt, FakeParams(5))]

        async def main() -> list:
            prompts = [[tag] for tag in range(20)]
            prompts[5], prompts[12] = [], [12] * 11
            return await asyncio.gather(*(consume(p) for p in prompts), return_exceptions=True)

        results = asyncio.run(main())
        assert engine.is_alive
        assert [o.token_ids[0] for o in engine.stream_sync([3], FakeParams(2))] == [300, 301]
    assert type(results[5]) is InvalidRequestError
    assert type(results[12]) is PromptTooLongError
    for tag, outs in enumerate(results):
        if tag not in (5, 12):
            check_complete(tag, 5, outs)


def test_a_crash_in_step_fails_every_request_and_marks_the_engine_dead():
    def bug_on_third_step(fake: FakeEngine) -> None:
        if fake.steps == 3:
            raise RuntimeError("index out of range in the sampler")

    fake = FakeEngine(step_hook=bug_on_third_step)
    with started(fake) as engine:
        assert engine.is_alive

        async def consume(tag: int) -> list[StepOutput]:
            return [o async for o in engine.generate([tag], FakeParams(FOREVER))]

        async def main() -> list:
            return await asyncio.gather(*(consume(tag) for tag in range(10)), return_exceptions=True)

        results = asyncio.run(main())
        assert all(type(r) is EngineDeadError for r in results)
        assert all(isinstance(r.__cause__, RuntimeError) for r in results)
        assert "RuntimeError" in str(results[0])
        assert not engine.is_alive

        async def later() -> None:
            async for _ in engine.generate([1], FakeParams(5)):
                pass

        with pytest.raises(EngineDeadError):
            asyncio.run(later())
        with pytest.raises(EngineDeadError):
            next(engine.stream_sync([1], FakeParams(5)))
    assert fake.steps == 3


def test_stream_sync_from_plain_threads_and_close_aborts():
    fake = FakeEngine()
    with started(fake) as engine:

        def consume(tag: int) -> list[StepOutput]:
            return list(engine.stream_sync([tag], FakeParams(1 + tag % 8)))

        def leave_after_two(tag: int) -> None:
            stream = engine.stream_sync([tag], FakeParams(FOREVER))
            assert [next(stream).token_ids, next(stream).token_ids] == [[tag * 100], [tag * 100 + 1]]
            stream.close()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(consume, range(40)))
            list(pool.map(leave_after_two, range(40, 44)))
        wait_until(lambda: not fake.running)
    for tag, outs in enumerate(results):
        check_complete(tag, 1 + tag % 8, outs)
    assert sorted(fake.tags[i] for i in fake.aborted) == [40, 41, 42, 43]


def test_consumers_on_several_event_loops():
    fake = FakeEngine()
    with started(fake) as engine:

        async def consume(tag: int) -> list[StepOutput]:
            return [o async for o in engine.generate([tag], FakeParams(1 + tag % 8))]

        def one_loop(first: int) -> list[list[StepOutput]]:
            async def main() -> list[list[StepOutput]]:
                return await asyncio.gather(*(consume(tag) for tag in range(first, first + 25)))

            return asyncio.run(main())

        with ThreadPoolExecutor(4) as pool:
            results = [outs for batch in pool.map(one_loop, range(0, 100, 25)) for outs in batch]
    for tag, outs in enumerate(results):
        check_complete(tag, 1 + tag % 8, outs)


def test_stop_fails_pending_requests_frees_their_blocks_and_joins():
    fake = FakeEngine(step_hook=lambda _: time.sleep(0.001))
    engine = AsyncEngine(fake)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        next(engine.stream_sync([1], FakeParams(5)))  # not started yet
    engine.start()
    first_outputs = threading.Barrier(5)

    def consume(tag: int) -> BaseException | None:
        stream = engine.stream_sync([tag], FakeParams(FOREVER))
        next(stream)
        first_outputs.wait()
        try:
            for _ in stream:
                pass
        except EngineDeadError as exc:
            return exc
        return None

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(consume, tag) for tag in range(4)]
        first_outputs.wait()
        engine.stop()
        assert not engine._thread.is_alive()
        assert all(type(f.result(timeout=5)) is EngineDeadError for f in futures)
    assert not fake.running and sorted(fake.aborted) == sorted(fake.tags)
    assert not engine.is_alive
    engine.stop()  # a second stop is harmless
    with pytest.raises(EngineDeadError, match="stopped"):
        next(engine.stream_sync([1], FakeParams(5)))


def test_liveness_idle_is_alive_a_stalled_step_is_not_and_idle_does_not_spin():
    stalled = threading.Event()

    def stall_once(fake: FakeEngine) -> None:
        if fake.steps == 1:
            stalled.set()
            time.sleep(0.4)

    fake = FakeEngine(step_hook=stall_once)
    with started(fake, stall_timeout_s=0.1) as engine:
        time.sleep(0.2)
        assert engine.is_alive  # idle for longer than the stall timeout, waiting for work
        calls = fake.calls
        time.sleep(0.1)
        assert fake.calls == calls  # no busy loop while idle

        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(lambda: list(engine.stream_sync([1], FakeParams(3))))
            assert stalled.wait(5)
            time.sleep(0.2)
            assert not engine.is_alive  # one step has run for longer than the stall timeout
            check_complete(1, 3, future.result(timeout=5))
        wait_until(lambda: engine.is_alive)
        assert engine.stats() == FakeStats(running=0)
    assert not engine.is_alive


def test_run_here_steps_on_the_calling_thread_until_stop():
    """`run_here` (tameshi serve) keeps the engine on the thread that calls it; consumers on other
    threads and loops get whole outputs; stop() from a consumer's thread ends it without joining."""
    fake = FakeEngine()
    engine = AsyncEngine(fake)  # type: ignore[arg-type]
    results: list[list[StepOutput]] = []

    def consumers() -> None:
        async def consume(tag: int) -> list[StepOutput]:
            return [o async for o in engine.generate([tag], FakeParams(1 + tag % 8))]

        async def main() -> list[list[StepOutput]]:
            return await asyncio.gather(*(consume(tag) for tag in range(50)))

        try:
            results.extend(asyncio.run(main()))
        finally:
            engine.stop()

    ready = threading.Thread(target=consumers)
    engine.run_here(on_ready=ready.start)  # returns once the consumers called stop()
    ready.join()
    for tag, outs in enumerate(results):
        check_complete(tag, 1 + tag % 8, outs)
    assert fake.threads == {threading.get_ident()}
    assert not engine.is_alive
    with pytest.raises(RuntimeError, match="runs once"):
        engine.run_here()


def test_ctrl_c_in_run_here_stops_the_engine_and_fails_what_runs():
    """SIGINT reaches the main thread inside run_here: the requests in flight fail with
    EngineDeadError (their consumers do not hang), and the KeyboardInterrupt goes on up."""
    import os
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    fake = FakeEngine(step_hook=lambda _: time.sleep(0.001))
    engine = AsyncEngine(fake)  # type: ignore[arg-type]
    seen: list[BaseException | None] = []

    def consumer() -> None:
        stream = engine.stream_sync([3], FakeParams(FOREVER))
        next(stream)
        os.kill(os.getpid(), signal.SIGINT)
        try:
            for _ in stream:
                pass
            seen.append(None)
        except EngineDeadError as exc:
            seen.append(exc)

    thread = threading.Thread(target=consumer)
    with pytest.raises(KeyboardInterrupt):
        engine.run_here(on_ready=thread.start)
    thread.join(timeout=5)
    assert len(seen) == 1 and isinstance(seen[0], EngineDeadError)
    assert not engine.is_alive
