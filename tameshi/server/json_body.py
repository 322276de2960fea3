"""Every POST body here is JSON, whatever Content-Type the client claims, as llama.cpp's server reads it.

`curl -d '{...}'` sends `application/x-www-form-urlencoded` unless told otherwise, and FastAPI would
then hand the raw bytes to validation ("Input should be a valid dictionary"), which names the wrong
problem. The body is still parsed strictly: what is not JSON gets a 400 saying so.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class JSONBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type" or _is_json(v)]
            if not any(k == b"content-type" for k, _ in headers):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
