"""The FastAPI app: OpenAI's routes over one served model, plus /health and /metrics.

A request passes: CORS (with allow_origins only) -> API key (auth.py) -> body size (body_limit.py) ->
read as JSON (json_body.py) -> schema (schemas.py) -> server limits (params.py) -> prompt encoding, off
the event loop (the template sandbox may take up to its deadline) -> context check -> admission -> the
engine (generation.py) -> JSON or SSE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from tameshi.server import params as P
from tameshi.server.auth import APIKeyMiddleware
from tameshi.server.backend import ServedModel
from tameshi.server.body_limit import BodyLimitMiddleware
from tameshi.server.config import ServerConfig, served_model_name
from tameshi.server.errors import APIError, error_response, from_exception, install_handlers
from tameshi.server.generation import Choice, ChoiceRun, collect
from tameshi.server.json_body import JSONBodyMiddleware
from tameshi.server.metrics import Metrics, RequestCounter
from tameshi.server.responses import Envelope, chat_completion, dumps, text_completion
from tameshi.server.schemas import ChatCompletionRequest, CompletionRequest
from tameshi.server.streaming import SSEResponse, chat_events, completion_events

if TYPE_CHECKING:
    from tameshi.api import LLM


def create_app(model: LLM | ServedModel, config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app serving `model` (an LLM, whose engine thread this starts, or a ServedModel)."""
    config = config or ServerConfig()
    if not isinstance(model, ServedModel):
        model = ServedModel.from_llm(model, served_model_name(None, config.served_model_name))
    served: ServedModel = model
    metrics = Metrics()
    # /docs would pull scripts from a CDN; the schema itself stays at /openapi.json (behind the key)
    app = FastAPI(title="tameshi", docs_url=None, redoc_url=None)
    app.state.served, app.state.metrics, app.state.config = served, metrics, config
    install_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        if not served.engine.is_alive:
            return error_response(APIError(503, "The engine loop is not running.", code="engine_dead"))
        return _json({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        text = metrics.render(served.engine.stats(), served.engine.is_alive, served.name)
        return Response(text, media_type="text/plain; version=0.0.4")

    card = {"id": served.name, "object": "model", "created": served.created, "owned_by": "tameshi"}

    @app.get("/v1/models")
    async def models() -> Response:
        return _json({"object": "list", "data": [card]})

    @app.get("/v1/models/{model_id:path}")  # :path, since hub ids hold a slash ("org/name")
    async def model(model_id: str) -> Response:
        if model_id != served.name:
            raise APIError(
                404, f"The model `{model_id}` does not exist; this server serves `{served.name}`.",
                param="model", code="model_not_found",
            )  # fmt: skip
        return _json(card)

    @app.post("/v1/chat/completions")
    @_guarded
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        started = time.monotonic()
        P.check_request(body, config, served.name, body.n)
        P.check_chat(body, config)
        messages = [m.for_template() for m in body.messages]
        prompt = await _encode(lambda: served.encode_chat(messages))
        choices = _choices(body, [prompt], default_max=_chat_default(served), strip=True)
        env = Envelope.new("chat.completion", served.name)
        run = _admit(choices)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            events = chat_events(env, served, run, body.n, len(prompt), include, metrics, started)
            return SSEResponse(events, run.close)
        results = await _until_disconnect(request, run, len(choices), started)
        return _json(chat_completion(env, served, results, len(prompt)))

    @app.post("/v1/completions")
    @_guarded
    async def completions(body: CompletionRequest, request: Request) -> Response:
        started = time.monotonic()
        raw = body.prompt
        prompts: list[str | list[int]]
        prompts = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)  # type: ignore[arg-type]
        if not prompts:
            raise APIError(400, "prompt must not be an empty list.", param="prompt")
        P.check_request(body, config, served.name, len(prompts) * body.n)
        P.check_completion(body)
        ids = await _encode(lambda: [served.encode_prompt(p) for p in prompts])
        choices = _choices(body, ids, default_max=P.COMPLETION_DEFAULT_MAX_TOKENS, strip=False)
        env = Envelope.new("text_completion", served.name)
        run = _admit(choices)
        prompt_tokens = sum(len(p) for p in ids)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            skip = body.skip_special_tokens
            events = completion_events(env, served, run, prompt_tokens, skip, include, metrics, started)
            return SSEResponse(events, run.close)
        results = await _until_disconnect(request, run, len(choices), started)
        return _json(text_completion(env, served, results, prompt_tokens, body.skip_special_tokens))

    def _choices(
        body: ChatCompletionRequest | CompletionRequest,
        prompts: list[list[int]],
        default_max: int,
        strip: bool,
    ) -> list[Choice]:
        asked = P.requested_max_tokens(body, config)
        per_choice = P.sampling_params(body, served.generation_config, P.logprobs_asked(body, config), body.n)
        prompt_param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
        choices = []
        for p, ids in enumerate(prompts):
            new = P.fit_context(len(ids), asked, default_max, served.max_model_len, config, prompt_param)
            for i, sp in enumerate(per_choice):
                choices.append(Choice(p * body.n + i, ids, _with_max(sp, new), strip))
        return choices

    def _admit(choices: list[Choice]) -> ChoiceRun:
        if not served.engine.is_alive:
            raise APIError(503, "The engine loop is not running; see /health.", code="engine_dead")
        if metrics.running + len(choices) > config.max_concurrent:
            raise APIError(
                429, f"The server is at its limit of {config.max_concurrent} requests in flight; retry later.",
                code="server_busy",
            )  # fmt: skip
        metrics.prompt_tokens += sum(len(c.prompt_ids) for c in choices)
        return ChoiceRun(served.engine, choices, metrics)

    async def _until_disconnect(request: Request, run: ChoiceRun, count: int, started: float) -> list[Any]:
        """Collect every choice, unless the client leaves first: then abort them all."""
        work = asyncio.ensure_future(collect(run, count))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
            run.close()
        if not work.done() or work.cancelled():
            # 499 (nginx's "client closed request"): nobody reads it, but the access log says what happened
            raise APIError(499, "The client disconnected.", code="client_disconnected")
        results = work.result()  # raises the choice's error, if one failed
        # non-streamed: the first token reaches the client with the rest
        metrics.observe_ttft(time.monotonic() - started)
        return results

    # Pure ASGI middleware (not @app.middleware, whose wrapping of streamed responses gets in the way of
    # disconnect handling). Added last = outermost: the key is checked before the body is even read.
    app.add_middleware(JSONBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    if config.allow_origins:
        # outside the key: a browser's preflight (OPTIONS) carries none, and a 401 must still be readable
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.allow_origins), allow_methods=["GET", "POST"],
            allow_headers=["*"], expose_headers=["Retry-After"],
        )  # fmt: skip
    app.add_middleware(RequestCounter, metrics=metrics, routes=app.routes)
    return app


def _guarded(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Any exception becomes this request's error response (an unexpected one a logged 500), handled
    here rather than by Starlette's last-resort handler, which re-raises into the server."""

    @functools.wraps(route)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await route(*args, **kwargs)
        except Exception as exc:
            return error_response(from_exception(exc))

    return wrapper


def _with_max(params: Any, max_new_tokens: int) -> Any:
    return dataclasses.replace(params, max_new_tokens=max_new_tokens)


def _chat_default(served: ServedModel) -> int:
    value = served.generation_config.get("max_new_tokens")
    return value if isinstance(value, int) and value > 0 else P.CHAT_DEFAULT_MAX_TOKENS


async def _encode(work: Any) -> Any:
    try:
        return await asyncio.to_thread(work)
    except Exception as exc:
        raise from_exception(exc) from exc


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")
