"""API-key check on every route but /health, as pure ASGI middleware.

Middleware rather than a route dependency so that nothing escapes it: 404s, 405s, /metrics and the
OpenAPI document all need the key too (vLLM's --api-key covered only some path prefixes, which left
/tokenize and /pause open; reliability.md §1.1). /health stays open for load balancers and probes.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from tameshi.server.errors import APIError

OPEN_PATHS = frozenset({"/health"})


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        # the scheme's case does not matter (RFC 7235 §2.1); compare_digest: the time taken must not
        # tell an attacker how much of the key was right
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.lstrip(b" "), self._key):
            await self.app(scope, receive, send)
            return
        err = APIError(
            401, "Missing or incorrect API key; send it as `Authorization: Bearer KEY`.",
            code="invalid_api_key",
        )  # fmt: skip
        body = err.encode()
        await send({
            "type": "http.response.start", "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})
