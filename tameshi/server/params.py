"""A parsed request -> the engine's SamplingParams, after every server limit and context check.

Unset sampling fields come from the model's generation_config.json, then OpenAI's defaults
(temperature 1, top_p 1, no top-k), as vLLM does; the server always samples unless temperature is 0.
Each limit failure is a 400 that names the field and the bound.
"""

from __future__ import annotations

import dataclasses

from tameshi.sampling_params import SamplingParams
from tameshi.server.config import ServerConfig
from tameshi.server.errors import APIError
from tameshi.server.schemas import ChatCompletionRequest, CompletionRequest, _Sampling

CHAT_DEFAULT_MAX_TOKENS = 512  # when generation_config.json names none (tameshi's own default)
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def check_request(req: _Sampling, config: ServerConfig, served_name: str, choices: int) -> None:
    """Limits shared by both endpoints; `choices` = prompts x n, the engine requests it will start."""
    if req.model is not None and req.model != served_name:
        raise APIError(
            404, f"The model `{req.model}` does not exist; this server serves `{served_name}`.",
            param="model", code="model_not_found",
        )  # fmt: skip
    if req.n > config.max_n or choices > config.max_n:
        raise _bad(f"n (times the number of prompts) must be at most {config.max_n}, got {choices}.", "n")
    if choices > config.max_concurrent:  # a 429 here could never succeed, and clients retry a 429
        raise _bad(
            f"n (times the number of prompts) is {choices}, more than this server's limit of "
            f"{config.max_concurrent} requests in flight (max_concurrent), so it could never run.", "n",
        )  # fmt: skip
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > config.max_stop:
        raise _bad(f"stop may hold at most {config.max_stop} sequences, got {len(stops)}.", "stop")
    if any(not s or len(s) > config.max_stop_chars for s in stops):
        raise _bad(f"each stop sequence must have 1 to {config.max_stop_chars} characters.", "stop")
    if req.stream_options is not None and not req.stream:
        raise _bad("stream_options is only allowed when stream is true.", "stream_options")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise _bad(f"{name} is not supported by this server (use repetition_penalty).", name)
    if req.logit_bias:
        raise _bad("logit_bias is not supported by this server.", "logit_bias")


def check_chat(req: ChatCompletionRequest, config: ServerConfig) -> None:
    if req.tools:
        raise _bad("tools are not supported by this server yet.", "tools")
    if isinstance(req.tool_choice, dict) or req.tool_choice not in (None, "none", "auto"):
        raise _bad("tool_choice is not supported by this server yet.", "tool_choice")
    if req.top_logprobs is not None and not req.logprobs:
        raise _bad("top_logprobs needs logprobs set to true.", "top_logprobs")
    fmt = req.response_format.type if req.response_format else "text"
    if fmt == "json_schema":
        raise _bad(
            "response_format json_schema needs constrained decoding, not built yet.", "response_format"
        )
    # Not constrained (yet): like OpenAI, json_object needs the prompt to ask for JSON, or the model won't.
    if fmt == "json_object" and not any("json" in m.text().lower() for m in req.messages):
        raise _bad(
            "response_format json_object needs the word 'JSON' in the messages; note that this "
            "server does not constrain the output, it only relies on the prompt.", "messages",
        )  # fmt: skip


def check_completion(req: CompletionRequest) -> None:
    if req.echo:
        raise _bad("echo is not supported by this server.", "echo")
    if req.suffix:
        raise _bad("suffix is not supported by this server.", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise _bad("best_of is not supported by this server (leave it unset or equal to n).", "best_of")


def requested_max_tokens(req: _Sampling, config: ServerConfig) -> int | None:
    asked = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        asked = req.max_completion_tokens  # the newer name wins, as in OpenAI's API
    if asked is not None and asked > config.max_tokens:
        raise _bad(f"max_tokens must be at most {config.max_tokens}, got {asked}.", "max_tokens")
    if asked is not None and req.min_tokens is not None and req.min_tokens > asked:
        raise _bad(f"min_tokens ({req.min_tokens}) must not exceed max_tokens ({asked}).", "min_tokens")
    return asked


def logprobs_asked(req: _Sampling, config: ServerConfig) -> int | None:
    if isinstance(req, ChatCompletionRequest):
        k, name = (req.top_logprobs or 0) if req.logprobs else None, "top_logprobs"
    else:
        k, name = req.logprobs, "logprobs"  # type: ignore[attr-defined]
    if k is not None and k > config.max_logprobs:
        raise _bad(f"{name} must be at most {config.max_logprobs}, got {k}.", name)
    return k


def fit_context(
    prompt_len: int, asked: int | None, default: int, max_model_len: int, config: ServerConfig,
    prompt_param: str,
) -> int:  # fmt: skip
    """New tokens for a prompt: the ask if it fits the context window, else a 400 with the numbers;
    `prompt_param` is the field that held the prompt ("messages" or "prompt")."""
    window = (
        max_model_len
        if config.max_prompt_tokens is None
        else min(max_model_len, config.max_prompt_tokens + 1)
    )
    if prompt_len >= window:
        raise _bad(
            f"This model's maximum context length is {max_model_len} tokens and this server takes "
            f"prompts of at most {window - 1} tokens. However, your prompt has {prompt_len} tokens. "
            "Please reduce the length of the prompt.", prompt_param, "context_length_exceeded",
        )  # fmt: skip
    room = max_model_len - prompt_len
    if asked is None:
        return max(1, min(default, config.max_tokens, room))
    if asked > room:
        raise _bad(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + asked} tokens ({prompt_len} in the prompt, {asked} in the completion). "
            "Please reduce the length of the prompt or completion.", "max_tokens", "context_length_exceeded",
        )  # fmt: skip
    return asked


def sampling_params(
    req: _Sampling, generation_config: dict, logprobs: int | None, n: int
) -> list[SamplingParams]:
    """One SamplingParams per choice; a seeded request gives choice i the seed + i, so n > 1 with a
    seed is reproducible and its choices still differ. max_new_tokens is filled in per prompt."""

    def pick(name: str, default: float | int | None) -> float | int | None:
        value = getattr(req, name)
        return value if value is not None else generation_config.get(name, default)

    top_k = pick("top_k", 0)
    base = SamplingParams(
        do_sample=True,  # OpenAI semantics: always sampled; temperature 0 is greedy (SamplingParams.greedy)
        temperature=pick("temperature", 1.0),
        top_p=pick("top_p", 1.0),
        top_k=0 if top_k == -1 else top_k,
        min_p=pick("min_p", None),
        repetition_penalty=pick("repetition_penalty", 1.0),
        stop=req.stop or (),
        ignore_eos=req.ignore_eos,
        skip_special_tokens=req.skip_special_tokens,
        min_new_tokens=req.min_tokens,
        logprobs=logprobs,
        max_new_tokens=1,  # a placeholder that validates; the real value depends on the prompt
    )
    if req.seed is None:
        return [base] * n
    return [dataclasses.replace(base, seed=req.seed + i) for i in range(n)]
