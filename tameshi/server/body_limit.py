"""Request bodies past ServerConfig.max_body_bytes are refused with 413 before any parsing.

Content-Length is checked first (the cheap refusal); a chunked or lying body is counted as it
streams in, so no more than the limit is ever held in memory (reliability.md §3.12: a 50 KB request
crashed llama-server, 2^31-character messages overflowed it).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tameshi.server.errors import APIError


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        # Read the whole (bounded) body now, then hand it to the app as one message.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: waits for the disconnect, as the server's own would

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        err = APIError(
            413, f"The request body is larger than this server's limit of {self.max_bytes} bytes.",
            code="request_too_large",
        )  # fmt: skip
        body = err.encode()
        await send({
            "type": "http.response.start", "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})
