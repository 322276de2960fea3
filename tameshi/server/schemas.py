"""Request bodies of /v1/chat/completions and /v1/completions, as OpenAI's API defines them (formats.md §6.1).

Strict types (no "2" for 2, no 1 for true, no NaN), OpenAI's fixed ranges here; limits that are the
server's choice (n, max_tokens, stop count, logprobs) live in ServerConfig and are checked in
params.py. Unknown fields are ignored as OpenAI and vLLM do, since clients send newer fields freely;
known fields this runtime cannot honour are refused there rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_CONFIG = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


def _valid_unicode(text: str) -> str:
    # JSON can spell a lone surrogate ("\ud800"); Python keeps it, but no tokenizer or UTF-8 writer can
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
# In the schema only: a list of prompts or ids this long could never pass the body or n limits anyway.
_MANY = 100_000


class TextPart(BaseModel):
    model_config = _CONFIG
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = _CONFIG
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None

    def for_template(self) -> dict[str, Any]:
        # "developer" is OpenAI's newer name for "system"; chat templates only know the latter.
        role = "system" if self.role == "developer" else self.role
        content = self.content
        if isinstance(content, list):
            content = [{"type": "text", "text": part.text} for part in content]
        message: dict[str, Any] = {"role": role, "content": content if content is not None else ""}
        if self.name is not None:
            message["name"] = self.name
        return message

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = _CONFIG
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = _CONFIG
    type: Literal["text", "json_object", "json_schema"]


Stop = Text | Annotated[list[Text], Field(max_length=_MANY)] | None


class _Sampling(BaseModel):
    """Fields both endpoints share; vLLM's extensions (top_k, min_p, ...) included."""

    model_config = _CONFIG
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)  # OpenAI's int64
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extensions
    top_k: int | None = Field(default=None, ge=-1)  # -1 or 0: off (vLLM spells "off" as -1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool = False
    skip_special_tokens: bool = True


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=_MANY)]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: (
        Text
        | Annotated[list[int], Field(max_length=_MANY)]
        | Annotated[list[Text], Field(max_length=_MANY)]
        | Annotated[list[Annotated[list[int], Field(max_length=_MANY)]], Field(max_length=_MANY)]
    )
    max_tokens: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)
