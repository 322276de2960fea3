"""One HTTP request's choices (n per prompt) run as engine requests; their outputs merged into one stream.

Each choice is a task reading its own engine generator. Whoever stops reading the merged stream
(client gone, handler cancelled) cancels those tasks, and each task's generator then sends the
engine an abort, which frees the choice's KV blocks. CancelledError is a BaseException, so it passes
every `except Exception` untouched (the sglang#39216 failure mode, reliability.md §3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tameshi.engine.sequence import TokenLogprob
from tameshi.sampling_params import SamplingParams
from tameshi.server.backend import GenerationEngine
from tameshi.server.metrics import Metrics


@dataclass(frozen=True)
class Choice:
    index: int  # OpenAI's choice index: prompt number * n + i
    prompt_ids: list[int]
    params: SamplingParams
    strip_leading: bool = False  # chat: the template may end in "Assistant:" and the model adds the space


@dataclass
class ChoiceDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None


@dataclass
class ChoiceResult:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + delta.logprobs
        self.finish_reason = delta.finish_reason or self.finish_reason


@dataclass(frozen=True)
class _Failed:
    error: BaseException


async def _pump(engine: GenerationEngine, choice: Choice, out: asyncio.Queue, metrics: Metrics) -> None:
    started = not choice.strip_leading
    finished = False
    try:
        async with contextlib.aclosing(engine.generate(choice.prompt_ids, choice.params)) as outputs:
            async for step in outputs:
                text = step.text
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                metrics.generation_tokens += len(step.token_ids)
                finished = step.finish_reason is not None
                out.put_nowait(
                    ChoiceDelta(choice.index, text, step.token_ids, step.logprobs, step.finish_reason)
                )
    except asyncio.CancelledError:
        if not finished:
            metrics.aborted += 1
        raise
    except Exception as exc:  # this choice failed; the request reports it, the engine lives on
        out.put_nowait(_Failed(exc))


class ChoiceRun:
    """The choices of one request, started on creation (call from the event loop).

    `deltas()` yields their outputs as the engine produces them and ends when every choice has
    finished; a failed choice raises its exception there. `close()` aborts whatever still runs: call it
    in a `finally`, whether or not `deltas()` was ever iterated.
    """

    def __init__(self, engine: GenerationEngine, choices: list[Choice], metrics: Metrics) -> None:
        self._out: asyncio.Queue = asyncio.Queue()
        self._left = len(choices)
        self._metrics = metrics
        self._tasks = [asyncio.create_task(_pump(engine, c, self._out, metrics)) for c in choices]
        metrics.running += len(choices)
        self._closed = False

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        while self._left:
            item = await self._out.get()
            if isinstance(item, _Failed):
                raise item.error
            if item.finish_reason is not None:
                self._left -= 1
            yield item

    def close(self) -> None:
        # Synchronous on purpose: it may run inside an already-cancelled scope, where an await would
        # be interrupted; each cancelled task runs its own cleanup (the engine abort) by itself.
        if self._closed:
            return
        self._closed = True
        self._metrics.running -= len(self._tasks)
        for task in self._tasks:
            task.cancel()


async def collect(run: ChoiceRun, count: int) -> list[ChoiceResult]:
    """Every choice's whole output, in index order."""
    results = [ChoiceResult(i) for i in range(count)]
    async with contextlib.aclosing(run.deltas()) as deltas:
        async for delta in deltas:
            results[delta.index].add(delta)
    return results
