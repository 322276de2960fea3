"""A `tokenizers.Tokenizer` rebuilt from a GGUF's `tokenizer.ggml.*` metadata.

A GGUF carries no tokenizer.json, only the vocabulary, merges, token types and the name of the
pre-tokenizer llama.cpp should use (`tokenizer.ggml.pre`). We rebuild what llama.cpp runs
(`src/llama-vocab.cpp`): byte-level BPE for `gpt2`, byte-fallback BPE for SentencePiece `llama`.
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from tameshi.errors import CorruptCheckpointError, UnsupportedModelError
from tameshi.loading.gguf_header import Metadata

log = logging.getLogger(__name__)

# Token types (llama.cpp `llama_token_type`).
UNKNOWN, CONTROL, USER_DEFINED = 2, 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` values grouped as llama.cpp groups them (same regexes, same order).
_GPT2_PRE = {"gpt2", "mpt", "olmo", "jais", "default"}
_DIGITS_THEN_GPT2_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"}
_QWEN2_PRE = {"qwen2", "deepseek-r1-qwen"}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class VocabSpec:
    """What a GGUF says about its tokenizer, validated."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool

    def token(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.tokens[token_id]


def read_vocab(meta: Metadata, path: Path) -> VocabSpec:
    model = meta.scalar("tokenizer.ggml.model", "str")
    if model not in ("gpt2", "llama"):
        raise UnsupportedModelError(
            f"{path} uses tokenizer model {model!r}; tameshi reads 'gpt2' and 'llama'."
        )
    tokens = meta.array("tokenizer.ggml.tokens", "str")
    if not tokens:
        raise CorruptCheckpointError(f"{path} has no tokenizer.ggml.tokens vocabulary.")
    n = len(tokens)
    token_types = meta.array("tokenizer.ggml.token_type", "int") or [1] * n
    scores = meta.array("tokenizer.ggml.scores", "float")
    for key, values in (("token_type", token_types), ("scores", scores)):
        if values is not None and len(values) != n:
            raise CorruptCheckpointError(f"{path} has {len(values)} tokenizer.ggml.{key} for {n} tokens.")
    ids = {}
    for name in ("bos", "eos", "unknown", "padding"):
        ids[name] = meta.scalar(f"tokenizer.ggml.{name}_token_id", "int")
        if ids[name] is not None and not 0 <= ids[name] < n:
            raise CorruptCheckpointError(f"{path} has {name} token id {ids[name]} outside its {n} tokens.")
    return VocabSpec(
        model=model,
        pre=meta.scalar("tokenizer.ggml.pre", "str"),
        tokens=tokens,
        token_types=token_types,
        scores=scores,
        merges=meta.array("tokenizer.ggml.merges", "str"),
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        unk_id=ids["unknown"],
        pad_id=ids["padding"],
        # llama.cpp adds BOS for SentencePiece vocabularies that do not say otherwise.
        add_bos=meta.scalar("tokenizer.ggml.add_bos_token", "bool", model == "llama"),
        add_eos=meta.scalar("tokenizer.ggml.add_eos_token", "bool", False),
        add_space_prefix=meta.scalar("tokenizer.ggml.add_space_prefix", "bool", model == "llama"),
    )


def _vocab(spec: VocabSpec) -> dict[str, int]:
    # A string listed twice keeps its first id, as a tokenizer.json cannot map one string to two ids.
    vocab: dict[str, int] = {}
    for i, token in enumerate(spec.tokens):
        vocab.setdefault(token, i)
    return vocab


def _file_merges(spec: VocabSpec, path: Path) -> list[tuple[str, str]]:
    merges = []
    for merge in spec.merges or []:
        parts = merge.split(" ")
        if len(parts) != 2:
            raise CorruptCheckpointError(
                f"{path} has a malformed merge {merge[:40]!r} (expected 'left right')."
            )
        merges.append((parts[0], parts[1]))
    return merges


def _merges_from_scores(spec: VocabSpec, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece files list scores, not merges: every split of a token into two tokens is a merge,
    ranked by the merged token's score (best first), ties by token id. Linear in the vocabulary's bytes."""
    scores = spec.scores or [0.0] * len(spec.tokens)
    found = []
    for token_id, (token, score) in enumerate(zip(spec.tokens, scores, strict=True)):
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in vocab and right in vocab:
                found.append((-score, token_id, vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _byte_level_pre(pre: str | None, path: Path) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """The pre-tokenizer for a `tokenizer.ggml.pre` value, and whether BPE should skip merging words
    already in the vocabulary (llama.cpp's `ignore_merges`, set for the llama3 family)."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre is None or pre in _GPT2_PRE:
        if pre is None:
            # Files converted before April 2024 name no pre-tokenizer; llama.cpp also warns and uses GPT-2's.
            log.warning("%s names no tokenizer.ggml.pre; splitting text the GPT-2 way.", path)
        return byte_level, False
    if pre in _DIGITS_THEN_GPT2_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]), False
    split = {**dict.fromkeys(_LLAMA3_PRE, _LLAMA3_SPLIT), **dict.fromkeys(_QWEN2_PRE, _QWEN2_SPLIT)}.get(pre)
    if split is None:
        raise UnsupportedModelError(
            f"{path} uses pre-tokenizer {pre!r}, which tameshi does not reproduce yet."
        )
    sequence = [
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    return pre_tokenizers.Sequence(sequence), pre in _LLAMA3_PRE


def _build_byte_level(spec: VocabSpec, path: Path) -> Tokenizer:
    pre, ignore_merges = _byte_level_pre(spec.pre, path)
    bpe = models.BPE(vocab=_vocab(spec), merges=_file_merges(spec, path), ignore_merges=ignore_merges)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _build_sentencepiece(spec: VocabSpec, path: Path) -> Tokenizer:
    for token, token_type in zip(spec.tokens, spec.token_types, strict=True):
        if token_type == 6 and not _BYTE_TOKEN.fullmatch(token):  # 6 is BYTE
            raise CorruptCheckpointError(f"{path} has a byte token {token[:20]!r} that is not <0xNN>.")
    vocab = _vocab(spec)
    merges = _file_merges(spec, path) if spec.merges else _merges_from_scores(spec, vocab)
    unk = spec.token(spec.unk_id)
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    # The prefix space goes before the first piece of text only, as llama.cpp and HF's non-legacy Llama do.
    scheme = "first" if spec.add_space_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _add_special_tokens(tokenizer: Tokenizer, spec: VocabSpec) -> None:
    # Control tokens (and SentencePiece's <unk>) must match whole in the text and be skipped when
    # decoding with skip_special_tokens; user-defined ones (like <think>) match whole but are text.
    special, user = [], []
    for token, token_type in zip(spec.tokens, spec.token_types, strict=True):
        if token_type == CONTROL or (token_type == UNKNOWN and spec.model == "llama"):
            special.append(AddedToken(token, special=True, normalized=False))
        elif token_type == USER_DEFINED:
            user.append(AddedToken(token, special=False, normalized=False))
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)


def _post_processor(spec: VocabSpec) -> processors.TemplateProcessing | None:
    bos = spec.token(spec.bos_id) if spec.add_bos else None
    eos = spec.token(spec.eos_id) if spec.add_eos else None
    if bos is None and eos is None:
        return None

    def sequence(piece: str, type_id: int) -> list[str]:
        return [f"{t}:{type_id}" for t in (bos, piece, eos) if t is not None]

    return processors.TemplateProcessing(
        single=sequence("$A", 0),
        pair=sequence("$A", 0) + sequence("$B", 1),
        special_tokens=[(t, i) for t, i in ((bos, spec.bos_id), (eos, spec.eos_id)) if t is not None],
    )


def build_tokenizer(spec: VocabSpec, path: Path) -> Tokenizer:
    try:
        if spec.model == "gpt2":
            tokenizer = _build_byte_level(spec, path)
        else:
            tokenizer = _build_sentencepiece(spec, path)
    except Exception as e:  # the tokenizers library rejects e.g. merges of unknown tokens
        if isinstance(e, CorruptCheckpointError | UnsupportedModelError):
            raise
        raise CorruptCheckpointError(f"{path} has a tokenizer that cannot be built: {e}.") from e
    _add_special_tokens(tokenizer, spec)
    post = _post_processor(spec)
    if post is not None:
        tokenizer.post_processor = post
    return tokenizer
