"""What the server needs of a loaded model, in one place: its name, prompt encoding, the engine.

The routes see only this, so a test can serve the same model through a dead or failing engine, and
the HTTP layer never reaches into `LLM` internals.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import tokenizers

from tameshi.engine.sequence import StepOutput
from tameshi.errors import InvalidRequestError
from tameshi.sampling_params import SamplingParams
from tameshi.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tameshi.api import LLM


class GenerationEngine(Protocol):
    """The part of AsyncEngine the server uses."""

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[StepOutput]: ...

    @property
    def is_alive(self) -> bool: ...

    def stats(self) -> Any: ...


@dataclass
class ServedModel:
    name: str
    engine: GenerationEngine
    tokenizer: Tokenizer
    max_model_len: int
    vocab_size: int
    generation_config: dict
    encode_chat: Callable[[list[dict[str, Any]]], list[int]]  # renders in the sandboxed template
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def from_llm(cls, llm: LLM, name: str) -> ServedModel:
        return cls(
            name=name,
            engine=llm.async_engine,  # its worker thread starts here unless the caller runs it (tameshi serve)
            tokenizer=llm.tokenizer,
            max_model_len=llm.engine.max_model_len,
            vocab_size=llm.loaded.config.vocab_size,
            generation_config=dict(llm.loaded.generation_config or {}),
            encode_chat=llm.encode_chat,
        )

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """A completion prompt: text through the tokenizer (BOS as the model wants), or ids as given."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            ids = list(prompt)
        if not ids:
            raise InvalidRequestError("The prompt is empty.")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise InvalidRequestError(f"Prompt token ids must lie in [0, {self.vocab_size}).")
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        return _token_bytes(self.tokenizer, token_id)


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    # GPT-2's bytes_to_unicode, inverted: byte-level BPE spells each byte as one printable character
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


@lru_cache(maxsize=65536)
def _token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The exact bytes one token adds to the text, so that a client can join a multi-byte character that
    several tokens spell (OpenAI's logprobs `bytes`); decoding a lone token would give U+FFFD instead."""
    backend = tokenizer.backend
    piece = backend.id_to_token(token_id)
    if piece is None:
        return b""
    if token_id in tokenizer.special_ids:
        return piece.encode("utf-8")
    byte = _BYTE_TOKEN.fullmatch(piece)
    if byte:
        return bytes([int(byte[1], 16)])
    if isinstance(backend.decoder, tokenizers.decoders.ByteLevel):
        table = _byte_level_table()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
    # SentencePiece spells a space as U+2581; a lone decode would also strip the leading one
    return piece.replace("\u2581", " ").encode("utf-8")
