"""Text <-> token ids, with HF `tokenizer_config.json` semantics, and streaming detokenization.

The `tokenizers` library does the real work from `tokenizer.json`; this file adds what HF keeps in the
side files: which tokens are BOS/EOS/special, whether encode() prepends BOS, the chat template, and which
ids end generation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import tokenizers

from tameshi.errors import CorruptCheckpointError, ModelNotFoundError

# HF's slow/fast Llama tokenizers default add_bos_token to true when the config does not say.
_BOS_BY_DEFAULT_CLASSES = frozenset({"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizerFast"})
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _token_content(value: object) -> str | None:
    # tokenizer_config stores a special token either as a plain string or as a serialized AddedToken dict.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"{path} is not readable JSON ({e}).") from e
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the HF side-file semantics the runtime needs."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        tokenizer_config: dict,
        generation_config: dict | None = None,
    ) -> None:
        self.backend = backend
        self.tokenizer_config = dict(tokenizer_config)
        self.generation_config = dict(generation_config or {})

        self.bos_token = _token_content(tokenizer_config.get("bos_token"))
        self.eos_token = _token_content(tokenizer_config.get("eos_token"))
        self.bos_token_id = backend.token_to_id(self.bos_token) if self.bos_token is not None else None
        self.eos_token_id = backend.token_to_id(self.eos_token) if self.eos_token is not None else None

        gen_eos = self.generation_config.get("eos_token_id")
        gen_eos_ids = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        own_eos = [self.eos_token_id] if self.eos_token_id is not None else []
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(gen_eos_ids + own_eos))

        # HF skips the backend's special added tokens plus every token the config names as special.
        special = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        named = [_token_content(tokenizer_config.get(k)) for k in _NAMED_SPECIALS]
        named += [_token_content(t) for t in tokenizer_config.get("additional_special_tokens") or []]
        special |= {i for i in (backend.token_to_id(t) for t in named if t is not None) if i is not None}
        self.special_ids: frozenset[int] = frozenset(special)

        # Checked once so encode() neither misses nor doubles BOS, whatever the post-processor does.
        probe = backend.encode("a", add_special_tokens=True).ids
        self._post_processor_adds_bos = self.bos_token_id is not None and probe[:1] == [self.bos_token_id]
        if "add_bos_token" in tokenizer_config:
            self.add_bos_token = bool(tokenizer_config["add_bos_token"])
        else:
            is_llama = tokenizer_config.get("tokenizer_class") in _BOS_BY_DEFAULT_CLASSES
            self.add_bos_token = self.bos_token_id is not None and (self._post_processor_adds_bos or is_llama)

        template = tokenizer_config.get("chat_template")
        if isinstance(template, list):
            # HF allows several named templates; "default" is the one apply_chat_template uses.
            named_templates = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named_templates.get("default")
        self.chat_template: str | None = template if isinstance(template, str) else None

        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, folder: Path) -> Tokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelNotFoundError(f"{folder} has no tokenizer.json.")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust parser raises plain Exception subclasses
            raise CorruptCheckpointError(f"{path} could not be parsed as a tokenizer ({e}).") from e

        config: dict = {}
        if (folder / "tokenizer_config.json").is_file():
            config = _read_json(folder / "tokenizer_config.json")
        if (folder / "special_tokens_map.json").is_file():
            for key, value in _read_json(folder / "special_tokens_map.json").items():
                config.setdefault(key, value)
        # transformers >= 4.43 saves the template beside the config; that file wins, as in HF.
        if (folder / "chat_template.jinja").is_file():
            config["chat_template"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        generation_config = None
        if (folder / "generation_config.json").is_file():
            generation_config = _read_json(folder / "generation_config.json")
        return cls(backend, config, generation_config)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if not add_special_tokens or self.bos_token_id is None:
            return ids
        if self.add_bos_token and not self._post_processor_adds_bos:
            return [self.bos_token_id, *ids]
        if not self.add_bos_token and self._post_processor_adds_bos and ids[:1] == [self.bos_token_id]:
            return ids[1:]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        # Filtering here (not in the backend) keeps decode and IncrementalDetokenizer on one definition.
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        config = dict(self.tokenizer_config)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(
            json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )


# vLLM/TGI start the window a few prompt tokens back so the first generated token sees its left context.
_PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas, never emitting U+FFFD for an incomplete multibyte character.

    With no prompt_ids, "".join(deltas) + flush() == tokenizer.decode(ids). With prompt_ids, the output is
    what the ids add after the prompt's text (a SentencePiece `▁` then keeps its leading space).

    Each step decodes only a window of recent ids (vLLM's detokenize_incrementally, from TGI): the window's
    first `_read` ids are already settled text, decoded again only so that decoders which strip a leading
    space from the first token strip it on both sides of the subtraction. Text is released up to the last
    complete character, even when the newest token also starts the next one, and the window slides forward
    whenever the decoded text ends on a token boundary with no character cut.

    Known limit: HF's ByteFallback decoder turns a whole run of <0x..> tokens into U+FFFD when the run holds
    any invalid byte, so if generation stops mid-character right after byte-token characters, decode() also
    blanks those earlier characters, which this streamer has already released.
    """

    def __init__(
        self, tokenizer: Tokenizer, skip_special_tokens: bool = True, prompt_ids: Sequence[int] = ()
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        context = [i for i in prompt_ids if not (skip_special_tokens and i in tokenizer.special_ids)]
        self._ids: list[int] = context[-_PROMPT_CONTEXT_TOKENS:]
        self._read = len(self._ids)  # ids[:_read] are settled context; their text is never emitted again
        self._emitted_past_read = 0  # characters of the window's text after ids[:_read] already emitted
        self._pieces: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.backend.decode(ids, skip_special_tokens=False)

    def _step(self, flush: bool) -> str:
        settled_text = self._decode(self._ids[: self._read])
        window_text = self._decode(self._ids)
        # A trailing U+FFFD is an incomplete character until the next token (or the end) says otherwise.
        end = len(window_text) if flush else len(window_text.rstrip("\ufffd"))
        start = len(settled_text) + self._emitted_past_read
        delta = window_text[start:end] if end > start else ""
        self._emitted_past_read += len(delta)
        if flush or not window_text.endswith("\ufffd"):
            # Nothing is cut at this token boundary, so later decodes can start from here.
            self._ids = self._ids[self._read :]
            self._read = len(self._ids)
            self._emitted_past_read = 0
        if delta:
            self._pieces.append(delta)
        return delta

    def push(self, token_id: int) -> str:
        if self._skip_special_tokens and token_id in self._tokenizer.special_ids:
            return ""
        self._ids.append(token_id)
        return self._step(flush=False)

    def flush(self) -> str:
        if self._read == len(self._ids):
            return ""
        return self._step(flush=True)

    @property
    def text(self) -> str:
        return "".join(self._pieces)
