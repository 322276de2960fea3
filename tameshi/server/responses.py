"""Response bodies in OpenAI's exact shapes (formats.md §6.2-6.3), as plain dicts.

Dicts rather than pydantic models: a stream of 200 clients builds one chunk per token each, and a
dict plus json.dumps costs a fraction of a model's validation and dump.
"""

from __future__ import annotations

import codecs
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from tameshi.engine.sequence import TokenLogprob
from tameshi.server.backend import ServedModel
from tameshi.server.generation import ChoiceResult

_LOGPROB_FLOOR = -9999.0  # vLLM's stand-in for -inf, which JSON cannot carry


@dataclass(frozen=True)
class Envelope:
    """What every object of one response shares: id, object type, creation time, model."""

    kind: str  # "chat.completion" or "text_completion"
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(cls, kind: str, model: str) -> Envelope:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return cls(kind, model, f"{prefix}-{secrets.token_hex(12)}")

    def head(self, chunk: bool = False) -> dict[str, Any]:
        kind = "chat.completion.chunk" if chunk and self.kind == "chat.completion" else self.kind
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}  # fmt: skip


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _text(raw: bytes) -> str:
    # a token holding part of a character shows U+FFFD here; its `bytes` (chat) keep the exact value
    return raw.decode("utf-8", errors="replace")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else _LOGPROB_FLOOR


def chat_logprobs(model: ServedModel, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None

    def entry(token_id: int, value: float) -> dict[str, Any]:
        raw = model.token_bytes(token_id)
        return {"token": _text(raw), "logprob": _finite(value), "bytes": list(raw)}

    content = []
    for lp in logprobs:
        item = entry(lp.token_id, lp.logprob)
        item["top_logprobs"] = [entry(t, v) for t, v in lp.top]
        content.append(item)
    return {"content": content, "refusal": None}


class TextOffsets:
    """logprobs' text_offset, token by token, for one choice: the characters that the tokens before it
    spell. Counted over their joined bytes, so a token that completes no character sits where its
    character will start, and text a stream holds back (for a stop string) moves no offset."""

    def __init__(self, model: ServedModel, skip_special_tokens: bool) -> None:
        self._model, self._skip_special = model, skip_special_tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = 0

    def next(self, token_id: int) -> int:
        offset = self._chars
        if not (self._skip_special and token_id in self._model.tokenizer.special_ids):  # not in the text
            self._chars += len(self._decoder.decode(self._model.token_bytes(token_id)))
        return offset


def completion_logprobs(
    model: ServedModel, logprobs: list[TokenLogprob] | None, offsets: TextOffsets
) -> dict[str, Any] | None:
    """The legacy endpoint's shape; the streamed and the whole answer share `offsets` (one per choice)."""
    if logprobs is None:
        return None
    tokens, values, tops, text_offset = [], [], [], []
    for lp in logprobs:
        tokens.append(_text(model.token_bytes(lp.token_id)))
        values.append(_finite(lp.logprob))
        tops.append({_text(model.token_bytes(t)): _finite(v) for t, v in lp.top})
        text_offset.append(offsets.next(lp.token_id))
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": text_offset}


def chat_completion(
    env: Envelope, model: ServedModel, results: list[ChoiceResult], prompt_tokens: int
) -> dict[str, Any]:
    choices = [
        {
            "index": r.index,
            "message": {"role": "assistant", "content": r.text, "refusal": None},
            "logprobs": chat_logprobs(model, r.logprobs),
            "finish_reason": r.finish_reason,
        }
        for r in results
    ]
    completion = sum(len(r.token_ids) for r in results)
    return {**env.head(), "choices": choices, "usage": usage(prompt_tokens, completion)}


def text_completion(
    env: Envelope, model: ServedModel, results: list[ChoiceResult], prompt_tokens: int,
    skip_special_tokens: bool,
) -> dict[str, Any]:  # fmt: skip
    choices = [
        {
            "index": r.index,
            "text": r.text,
            "logprobs": completion_logprobs(model, r.logprobs, TextOffsets(model, skip_special_tokens)),
            "finish_reason": r.finish_reason,
        }
        for r in results
    ]
    completion = sum(len(r.token_ids) for r in results)
    return {**env.head(), "choices": choices, "usage": usage(prompt_tokens, completion)}


def dumps(body: dict[str, Any]) -> bytes:
    # Generated text is valid Unicode (the detokenizer holds partial characters back), so it goes out
    # as UTF-8 rather than \\u escapes: Japanese stays readable and 3x smaller on the wire.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
