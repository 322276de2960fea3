"""Per-request sampling parameters, spelled like transformers' `GenerationConfig`.

Field names follow HF so that a notebook's `model.generate(**params)` dict works as
`SamplingParams(**params)` unchanged; `resolve()` then fills what the request left unset the way
`generate` does: the model's `generation_config.json` first, then HF's own defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tameshi.errors import InvalidRequestError

# What notebooks for chat models commonly pass to `generate`; a starting point for `tameshi chat`.
NOTEBOOK_PRESET: dict = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 40,
    "max_new_tokens": 512,
    "repetition_penalty": 1.1,
}

# HF's defaults for fields neither the request nor generation_config.json set (4.57 `GenerationConfig`,
# 5.x `_get_default_generation_params`). min_p, min_new_tokens and seed stay None: "off" / "random".
# max_new_tokens is ours: HF's default is max_length=20, which counts the prompt, so any chat prompt of
# 20+ tokens would get an empty reply.
_DEFAULTS: dict[str, Any] = {
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "max_new_tokens": 512,
}
_FROM_GENERATION_CONFIG = (
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_new_tokens",
    "min_new_tokens",
)
# torch.Generator.manual_seed accepts exactly this range; outside it the request would crash mid-batch.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1
_GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()  # a str or list is accepted and normalised to a tuple
    stop_token_ids: tuple[int, ...] = ()  # ids that end generation besides the model's EOS ids
    ignore_eos: bool = False  # benchmarks: always run to max_new_tokens
    skip_special_tokens: bool = True
    min_new_tokens: int | None = (
        None  # EOS/stop ids are masked until this many tokens exist (HF MinNewTokens)
    )
    # Log-probabilities of each new token from the raw logits (before any processor, as OpenAI and vLLM
    # report them), plus this many top alternatives; 0: the chosen token's only; None: none at all.
    logprobs: int | None = None
    # HF spellings, folded into `stop` / `stop_token_ids` by __post_init__ and then cleared, so that two
    # params meaning the same thing compare equal. Unlike HF, eos_token_id adds stop ids rather than
    # replacing the model's EOS: notebooks pass the tokenizer's EOS here, which is the same id anyway.
    stop_strings: str | list[str] | tuple[str, ...] | None = field(default=None, kw_only=True, repr=False)
    eos_token_id: int | list[int] | tuple[int, ...] | None = field(default=None, kw_only=True, repr=False)
    pad_token_id: int | None = field(default=None, kw_only=True, repr=False)  # accepted, unused

    def __post_init__(self) -> None:
        stop = _as_tuple("stop", self.stop, str) + _as_tuple("stop_strings", self.stop_strings, str)
        ids = _as_tuple("stop_token_ids", self.stop_token_ids, int)
        ids += _as_tuple("eos_token_id", self.eos_token_id, int)
        for token_id in ids:
            _require("stop_token_ids", token_id, token_id >= 0, "a list of non-negative token ids")
        # dict.fromkeys de-duplicates while keeping the caller's order
        object.__setattr__(self, "stop", tuple(dict.fromkeys(stop)))
        object.__setattr__(self, "stop_token_ids", tuple(dict.fromkeys(ids)))
        object.__setattr__(self, "stop_strings", None)
        object.__setattr__(self, "eos_token_id", None)
        object.__setattr__(self, "pad_token_id", None)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            object.__setattr__(self, name, _as_float(name, getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        t, p, k, m, r = self.temperature, self.top_p, self.top_k, self.min_p, self.repetition_penalty
        _require("temperature", t, t is None or (math.isfinite(t) and t >= 0), "a finite number >= 0")
        _require("top_p", p, p is None or 0 < p <= 1, "a number in (0, 1]")
        _require("top_k", k, k is None or (_is_int(k) and k >= 0), "an integer >= 0 (0 turns it off)")
        _require("min_p", m, m is None or 0 <= m <= 1, "a number in [0, 1]")
        _require("repetition_penalty", r, r is None or (math.isfinite(r) and r > 0), "a finite number > 0")
        n = self.max_new_tokens
        _require("max_new_tokens", n, n is None or (_is_int(n) and n >= 1), "an integer >= 1")
        n = self.min_new_tokens
        _require("min_new_tokens", n, n is None or (_is_int(n) and n >= 0), "an integer >= 0")
        n = self.logprobs
        _require("logprobs", n, n is None or (_is_int(n) and n >= 0), "an integer >= 0")
        s = self.seed
        _require("seed", s, s is None or (_is_int(s) and _SEED_MIN <= s <= _SEED_MAX), "an integer")
        for name in ("do_sample", "ignore_eos", "skip_special_tokens"):
            value = getattr(self, name)
            _require(name, value, value is None or isinstance(value, bool), "true or false")

    def resolve(self, generation_config: dict | None) -> SamplingParams:
        """Fill unset fields from the model's generation_config.json dict, then HF's defaults."""
        config = generation_config or {}
        filled: dict[str, Any] = {}
        for name in _FROM_GENERATION_CONFIG:
            if getattr(self, name) is None:
                value = config.get(name)
                filled[name] = _DEFAULTS.get(name) if value is None else value
        return dataclasses.replace(self, **filled)

    @property
    def greedy(self) -> bool:
        # temperature 0 means greedy (OpenAI/vLLM convention); HF would reject it with do_sample=True.
        # Below vLLM's epsilon too: dividing by 1e-30 (or by a float64 that is 0 in float32) sends the
        # logits to inf and the softmax to NaN, where greedy is the limit the user was asking for.
        return not self.do_sample or self.temperature < _GREEDY_BELOW


# The knobs that only act when sampling. A terminal command given one of them (and not --greedy)
# samples, as llama.cpp and vLLM do; generate()'s dict keeps HF's rule (do_sample decides).
SAMPLING_KNOBS = ("temperature", "top_p", "top_k", "min_p")


def asks_to_sample(params: SamplingParams) -> bool:
    """Do these (a command's flags, before resolve) set a sampling knob and leave do_sample unset?
    temperature 0 is greedy either way."""
    knobs = [getattr(params, name) for name in SAMPLING_KNOBS]
    return params.do_sample is None and any(v is not None for v in knobs) and params.temperature != 0


def _require(name: str, value: object, ok: bool, allowed: str) -> None:
    if not ok:
        raise InvalidRequestError(f"{name} must be {allowed}, got {value!r}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_float(name: str, value: object) -> float | None:
    if value is None:
        return None
    _require(name, value, isinstance(value, int | float) and not isinstance(value, bool), "a number")
    # HF's warpers reject an int temperature such as 2; a float compares and divides the same
    return float(value)  # type: ignore[arg-type]


def _as_tuple(name: str, value: object, kind: type) -> tuple:
    if value is None:
        return ()
    items = (value,) if isinstance(value, kind) else value
    ok = isinstance(items, list | tuple) and all(
        isinstance(item, kind) and not isinstance(item, bool) for item in items
    )
    _require(name, value, ok, f"a {kind.__name__} or a list of them")
    return tuple(items)  # type: ignore[arg-type]
