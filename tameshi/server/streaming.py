"""Server-sent events exactly as OpenAI streams them (formats.md §6.3).

Chat: a role chunk per choice first, then content deltas, then a chunk with an empty delta and the
finish_reason; with stream_options.include_usage every chunk carries "usage": null and one last chunk
has no choices and the usage; then `data: [DONE]`. An error after the stream began goes out as a
`data: {"error": ...}` event (the official client raises APIError on it), then `data: [DONE]`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tameshi.server.backend import ServedModel
from tameshi.server.errors import from_exception
from tameshi.server.generation import ChoiceDelta, ChoiceRun
from tameshi.server.metrics import Metrics
from tameshi.server.responses import (
    Envelope,
    TextOffsets,
    chat_logprobs,
    completion_logprobs,
    dumps,
    usage,
)

DONE = b"data: [DONE]\n\n"


def event(body: dict[str, Any]) -> bytes:
    return b"data: " + dumps(body) + b"\n\n"


class SSEResponse(StreamingResponse):
    """A StreamingResponse that runs `on_close` however the stream ends: finished, failed, or the
    client gone (even when the body iterator was never started, so its own `finally` never ran)."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        # no-cache and X-Accel-Buffering: proxies must pass each event on at once, not buffer the stream
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Always race the stream against the client's disconnect, whatever ASGI spec version the server
        # speaks: from 2.4 on, Starlette notices a gone client only when a write fails, and a request
        # queued behind others writes nothing until its first token, so it would hold its place (and
        # then its KV blocks) for nobody.
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # a 2.4 server raises on writing to a closed socket
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            self._on_close()


async def _events(
    run: ChoiceRun,
    opening: list[dict[str, Any]],
    chunks: Callable[[ChoiceDelta], list[dict[str, Any]]],
    closing: Callable[[int], dict[str, Any] | None],
    metrics: Metrics,
    started: float,
) -> AsyncIterator[bytes]:
    completion_tokens = 0
    first = True
    try:
        for body in opening:
            yield event(body)
        async for delta in run.deltas():
            if first and delta.token_ids:
                metrics.observe_ttft(time.monotonic() - started)
                first = False
            completion_tokens += len(delta.token_ids)
            for body in chunks(delta):
                yield event(body)
        last = closing(completion_tokens)
        if last is not None:
            yield event(last)
    except Exception as exc:  # CancelledError / GeneratorExit (client gone) pass: nobody is there to tell
        yield event(from_exception(exc).body())
    finally:
        run.close()
    yield DONE


def chat_events(
    env: Envelope, model: ServedModel, run: ChoiceRun, n: int, prompt_tokens: int,
    include_usage: bool, metrics: Metrics, started: float,
) -> AsyncIterator[bytes]:  # fmt: skip
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    head = env.head(chunk=True)

    def chunk(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "choices": [choice], **extra}

    def chunks(d: ChoiceDelta) -> list[dict[str, Any]]:
        out = []
        if d.text or d.logprobs:
            out.append(chunk(d.index, {"content": d.text}, chat_logprobs(model, d.logprobs)))
        if d.finish_reason is not None:
            out.append(chunk(d.index, {}, finish=d.finish_reason))
        return out

    def closing(completion_tokens: int) -> dict[str, Any] | None:
        if not include_usage:
            return None
        return {**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    opening = [chunk(i, {"role": "assistant", "content": ""}) for i in range(n)]
    return _events(run, opening, chunks, closing, metrics, started)


def completion_events(
    env: Envelope, model: ServedModel, run: ChoiceRun, prompt_tokens: int, skip_special_tokens: bool,
    include_usage: bool, metrics: Metrics, started: float,
) -> AsyncIterator[bytes]:  # fmt: skip
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    head = env.head(chunk=True)
    offsets: dict[int, TextOffsets] = {}  # per choice

    def chunks(d: ChoiceDelta) -> list[dict[str, Any]]:
        if not (d.text or d.logprobs or d.finish_reason):
            return []
        if d.index not in offsets:
            offsets[d.index] = TextOffsets(model, skip_special_tokens)
        logprobs = completion_logprobs(model, d.logprobs, offsets[d.index])
        choice = {"index": d.index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason}
        return [{**head, "choices": [choice], **extra}]

    def closing(completion_tokens: int) -> dict[str, Any] | None:
        if not include_usage:
            return None
        return {**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    return _events(run, [], chunks, closing, metrics, started)
