"""Loops and cut-offs: the `repetition` and `truncation` hygiene checks.

A model in a loop repeats a line, a sentence or a few tokens until the length limit. Three signs, any
one flags the answer (thresholds chosen so that lists, recipes and code with similar lines pass):
  - the same prose line (≥ 8 characters) three or more times;
  - a 40-character stretch of prose three or more times (catches loops without line breaks, and
    Japanese, where a sentence is short in characters but rarely repeated verbatim);
  - the answer ends in ≥ 4 back-to-back copies of one unit of 1–60 characters covering ≥ 32
    characters ("ははははは…", "the the the …", "!!!!!!!!").
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tameshi.eval.checks.base import Answer, Verdict, clip, strip_code

_MIN_LINE = 8
_WINDOW = 40
_TIMES = 3


def _tail_loop(text: str) -> tuple[str, int] | None:
    """The unit and count of a run of identical copies that ends the text, if long enough."""
    tail = text[-600:]
    for period in range(1, 61):
        unit = tail[-period:]
        n = 1
        while tail[-(n + 1) * period : -n * period] == unit and (n + 1) * period <= len(tail):
            n += 1
        if n >= 4 and n * period >= 32 and unit.strip():
            return unit, n
    return None


def find_repetition(text: str) -> str | None:
    """A one-line description of the first loop sign found, or None."""
    prose = strip_code(text)
    lines = [" ".join(line.split()) for line in prose.splitlines()]
    counts = Counter(line for line in lines if len(line) >= _MIN_LINE)
    if counts:
        line, n = counts.most_common(1)[0]
        if n >= _TIMES:
            return f"line repeated {n}×: {clip(line, 50)!r}"
    flat = " ".join(prose.split())
    windows = Counter(flat[i : i + _WINDOW] for i in range(0, max(len(flat) - _WINDOW + 1, 0)))
    for chunk, n in windows.most_common():
        if n < _TIMES:
            break
        if len(set(chunk)) >= 4:  # a long "=====" rule under a heading is not a loop
            return f"{_WINDOW}-character passage repeated {n}×: {chunk!r}"
    loop = _tail_loop(re.sub(r"\s+", " ", text.rstrip()))
    if loop:
        unit, n = loop
        return f"ends in {n} copies of {clip(unit, 30)!r}"
    return None


def check_repetition(answer: Answer, args: dict[str, Any]) -> Verdict:
    found = find_repetition(answer.text)
    return Verdict("repetition", found is None, found or "no loop", kind="hygiene")


def check_truncation(answer: Answer, args: dict[str, Any]) -> Verdict:
    if answer.finish_reason == "error":
        return Verdict("truncation", False, f"not generated: {answer.error}", kind="hygiene")
    if answer.finish_reason == "length":
        cap = f"max_new_tokens={answer.max_new_tokens}" if answer.max_new_tokens else "the length limit"
        return Verdict(
            "truncation", False, f"cut at {cap} after {answer.completion_tokens} tokens", kind="hygiene"
        )
    return Verdict(
        "truncation", True, f"stopped by itself after {answer.completion_tokens} tokens", kind="hygiene"
    )
