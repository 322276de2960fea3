"""ServerConfig: where the server listens and the bound on every request field that multiplies work.

vLLM shipped a DoS advisory for nearly every unbounded field (n, logprobs, prompt lists, body size;
shared/reference/reliability.md §1.1), so each one has a limit here, checked before any token is
computed; `tameshi serve` reads its option defaults from this class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tameshi.errors import InvalidRequestError


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback only unless asked: an open port serves anyone on the network
    port: int = 8000
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer KEY`
    served_model_name: str | None = None  # None: taken from the model (see served_model_name())
    max_n: int = 8  # choices per request (n), times prompts for /v1/completions
    max_tokens: int = 4096  # the most new tokens one choice may ask for; also caps the default
    max_prompt_tokens: int | None = None  # None: the engine's context window is the only bound
    max_stop: int = 4  # stop sequences per request (OpenAI's own limit)
    max_stop_chars: int = 256  # characters per stop sequence
    max_logprobs: int = 20  # top_logprobs (chat) / logprobs (completions)
    max_body_bytes: int = 4 * 2**20  # request bodies past this get 413 before any parsing
    max_concurrent: int = 512  # engine requests in flight (choices, not HTTP requests); past it: 429
    allow_origins: tuple[str, ...] = ()  # browser origins allowed by CORS ("*": any); none: no CORS headers

    def __post_init__(self) -> None:
        for name in ("max_n", "max_tokens", "max_stop_chars", "max_body_bytes", "max_concurrent"):
            if getattr(self, name) < 1:
                raise InvalidRequestError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("max_stop", "max_logprobs"):
            if getattr(self, name) < 0:
                raise InvalidRequestError(f"{name} must be at least 0, got {getattr(self, name)}.")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise InvalidRequestError(f"max_prompt_tokens must be at least 1, got {self.max_prompt_tokens}.")
        if not 0 <= self.port <= 65535:
            raise InvalidRequestError(f"port must lie in 0..65535, got {self.port}.")
        for origin in self.allow_origins:
            # a browser sends scheme://host[:port], never a trailing slash: anything else never matches
            if origin != "*" and ("://" not in origin or origin.endswith("/")):
                raise InvalidRequestError(
                    f"allow_origins takes '*' or an origin such as http://localhost:3000, got {origin!r}."
                )
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidRequestError("api_key must not be empty; leave it unset to serve without one.")


DEFAULT_SERVED_NAME = "smollm2-135m-instruct"


def served_model_name(model: str | None, explicit: str | None = None) -> str:
    """The `model` clients send and see: the option if given, else what --model named (a hub id as
    written, a folder's or file's name), else the embedded default's name."""
    if explicit:
        return explicit
    if model is None:
        return DEFAULT_SERVED_NAME
    path = Path(model).expanduser()
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return model
