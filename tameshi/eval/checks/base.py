"""What every checker takes and gives: an `Answer` in, a `Verdict` (pass/fail + evidence) out."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# "answer": one of the probe's own checks (is it right?); "hygiene": run on every answer (is it clean:
# right language, no Chinese forms in Japanese, no loop, not cut off); "judge": the optional LLM judge.
KINDS = ("answer", "hygiene", "judge")


@dataclass(frozen=True)
class Answer:
    text: str
    lang: str  # the question's language: "en" or "ja"
    expect_lang: str  # the language the answer should be in (differs for translation probes)
    finish_reason: str = "stop"  # "stop", "length" or "error"
    completion_tokens: int = 0
    max_new_tokens: int | None = None
    error: str | None = None
    question: str = ""  # the user turn, for checks that must tell a restated number from an answer


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    evidence: str  # one line a person can check against the output
    kind: str = "answer"
    score: float | None = None  # the judge's 1–5; None for every other check

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "kind": self.kind, "passed": self.passed, "evidence": self.evidence}
        if self.score is not None:
            d["score"] = self.score
        return d


@dataclass(frozen=True)
class Checker:
    """A check type usable in suite files: its function and the arguments it accepts."""

    fn: Callable[[Answer, dict[str, Any]], Verdict]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    validate: Callable[[dict[str, Any]], None] | None = field(default=None)  # raises ValueError


_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|\Z)", re.S)
_INLINE = re.compile(r"`[^`\n]+`")


def strip_code(text: str) -> str:
    """The prose of an answer: fenced blocks and inline code removed (code says nothing of language)."""
    return _INLINE.sub(" ", _FENCE.sub("\n", text))


def fold(text: str) -> str:
    """Compare text the way a reader would: full-width → ASCII (NFKC), case folded, spaces squeezed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def clip(text: str, n: int = 60) -> str:
    """A short one-line excerpt for evidence."""
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1] + "…"
