"""OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, for every way a request fails.

Bad input is always 4xx with one clear sentence; only a genuine bug is a 500, and it fails its own
request, never the server (shared/reference/reliability.md §0.2). The official client maps the status
to its exception class (400 BadRequestError, 401 AuthenticationError, ...; formats.md §6.4).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from tameshi.engine.async_engine import EngineDeadError
from tameshi.errors import ModelOutputError, TameshiError

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import Response

log = logging.getLogger("tameshi.server")

_TYPES = {429: "rate_limit_error", 503: "server_unavailable"}
# A 429 here means the server is busy, not that a client spent a quota: a slot frees up within
# moments, and the official client waits this long before its retry.
RETRY_AFTER_S = 1


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = (
            type or _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
        )

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def encode(self) -> bytes:
        # ensure_ascii: an error may quote a client's string holding a lone surrogate, which UTF-8 cannot hold
        return json.dumps(self.body(), ensure_ascii=True).encode()


def from_exception(exc: BaseException) -> APIError:
    """The APIError a request gets for an exception raised while serving it."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"The engine is not running: {exc}", code="engine_dead")
    if isinstance(exc, ModelOutputError):  # the model's fault (NaN logits), not the request's
        return APIError(500, f"The model failed on this request: {exc}", code="model_output_nan")
    # InvalidRequestError, TemplateError, PromptTooLongError: the input's fault
    if isinstance(exc, TameshiError):
        return APIError(400, str(exc))
    # e.g. a lone surrogate (\ud800) in a string the tokenizer must encode
    if isinstance(exc, UnicodeError):
        return APIError(400, "The request holds text that is not valid Unicode (a lone surrogate?).")
    log.error("internal error while serving a request", exc_info=exc)
    return APIError(
        500, f"Internal error ({type(exc).__name__}); the server is still up, this request failed."
    )


def error_response(err: APIError, headers: dict[str, str] | None = None) -> Response:
    from starlette.responses import Response

    if err.status == 429:
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return Response(err.encode(), status_code=err.status, media_type="application/json", headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    first = errors[0]
    if first.get("type") == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "")
        return f"The body is not valid JSON ({why}).", None
    # pydantic names the union member it tried ("str", "list[int]", "function-after[...]"): not a field
    loc = [p for p in first.get("loc", ()) if p != "body" and not _is_union_tag(p)]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message + ".", param


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or any(c in part for c in "[(-"))


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def install_handlers(app: FastAPI) -> None:
    """Route FastAPI's own failures (validation, 404, 405, unreadable body) into OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def on_api_error(request: Request, exc: Exception) -> Response:
        return error_response(from_exception(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        message, param = _validation_message(list(exc.errors()))  # type: ignore[attr-defined]
        return error_response(APIError(400, message, param=param))

    async def on_http(request: Request, exc: Exception) -> Response:
        status = exc.status_code  # type: ignore[attr-defined]
        detail = exc.detail  # type: ignore[attr-defined]
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        message = {404: f"No route {request.url.path}.", 405: f"{request.method} is not allowed here."}
        text = message.get(status, detail if isinstance(detail, str) else "The request failed")
        text = text if text.endswith(".") else text + "."
        return error_response(APIError(status, text, code=code), headers=getattr(exc, "headers", None))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(TameshiError, on_api_error)
    app.add_exception_handler(UnicodeError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_api_error)
