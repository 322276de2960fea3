"""Text checks: `contains`, `regex`, `length` and `choice` (a multiple-choice letter)."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from tameshi.eval.checks.base import Answer, Verdict, clip, fold, strip_code


def check_contains(answer: Answer, args: dict[str, Any]) -> Verdict:
    """`any`: one of these; `all`: each of these; `none`: none of these. Compared after NFKC + casefold,
    so "ＴＯＫＹＯ" contains "tokyo" and "東京" matches in full-width text alike."""
    text = fold(answer.text)
    problems, found = [], []
    any_of = args.get("any") or []
    hits = [w for w in any_of if fold(w) in text]
    if any_of and not hits:
        problems.append(f"none of {any_of}")
    found += hits
    missing = [w for w in args.get("all") or [] if fold(w) not in text]
    if missing:
        problems.append(f"missing {missing}")
    found += [w for w in args.get("all") or [] if w not in missing]
    banned = [w for w in args.get("none") or [] if fold(w) in text]
    if banned:
        problems.append(f"has forbidden {banned}")
    if problems:
        return Verdict("contains", False, "; ".join(problems))
    return Verdict("contains", True, f"has {found}" if found else "no forbidden words")


def check_regex(answer: Answer, args: dict[str, Any]) -> Verdict:
    """`pattern` (Python re, searched in the NFKC-normalised answer, multiline); `min_count` matches
    needed (default 1), `max_count` allowed; `absent: true` means the pattern must not occur."""
    text = unicodedata.normalize("NFKC", answer.text).strip()
    flags = re.M | (re.I if args.get("ignore_case", True) else 0)
    matches = [m.group(0) for m in re.finditer(args["pattern"], text, flags)]
    shown = ", ".join(repr(clip(m, 30)) for m in matches[:5])
    if args.get("absent"):
        return Verdict("regex", not matches, f"found {shown}" if matches else "pattern absent, as required")
    lo, hi = int(args.get("min_count", 1)), args.get("max_count")
    ok = len(matches) >= lo and (hi is None or len(matches) <= int(hi))
    want = f"{lo}..{hi if hi is not None else ''}"
    return Verdict("regex", ok, f"{len(matches)} match(es) (want {want}): {shown or 'none'}")


def _words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text))


def check_length(answer: Answer, args: dict[str, Any]) -> Verdict:
    """`max_words` / `min_words` (English words), `max_chars` / `min_chars` (characters, spaces
    excluded: the unit for Japanese, which has no spaces). Code blocks count."""
    text = answer.text.strip()
    chars = len(re.sub(r"\s", "", text))
    words = _words(text)
    problems = []
    if "max_words" in args and words > args["max_words"]:
        problems.append(f"{words} words > {args['max_words']}")
    if "min_words" in args and words < args["min_words"]:
        problems.append(f"{words} words < {args['min_words']}")
    if "max_chars" in args and chars > args["max_chars"]:
        problems.append(f"{chars} characters > {args['max_chars']}")
    if "min_chars" in args and chars < args["min_chars"]:
        problems.append(f"{chars} characters < {args['min_chars']}")
    return Verdict("length", not problems, "; ".join(problems) or f"{words} words, {chars} characters")


_LETTER_ANSWER = re.compile(r"(?:answer(?: is)?|答え(?:は)?|正解(?:は)?)\s*[:：]?\s*\(?\**([A-D])\b", re.I)
# A letter alone: "B", "(B)", "B)", "B.", "Bです", the first of "A or C" — but not the English article in
# "A bat costs …".
_LONE_LETTER = re.compile(
    r"(?<![A-Za-z])[(（]?([A-D])"
    r"(?=[).:：、。）]|[ \t]*$|[\u3040-\u30ff\u4e00-\u9fff]|[ \t]+(?:or|and)[ \t]+[(（]?[A-D](?![A-Za-z]))",
    re.M,
)


def check_choice(answer: Answer, args: dict[str, Any]) -> Verdict:
    """`answer`: the right option letter (A–D). The letter after "Answer"/"答え" counts; otherwise the
    first option letter standing alone. Naming two different letters alone, with no marker, fails."""
    text = unicodedata.normalize("NFKC", strip_code(answer.text))
    want = str(args["answer"]).upper()
    marked = _LETTER_ANSWER.findall(text)
    if marked:
        got = marked[-1].upper()
        return Verdict("choice", got == want, f"answered {got}; expected {want}")
    lone = [m.upper() for m in _LONE_LETTER.findall(text)]
    if not lone:
        return Verdict("choice", False, f"no option letter found; expected {want}")
    if len(set(lone)) > 1:
        return Verdict("choice", False, f"names several options {sorted(set(lone))}; expected {want}")
    return Verdict("choice", lone[0] == want, f"answered {lone[0]}; expected {want}")


def validate_regex(args: dict[str, Any]) -> None:
    try:
        re.compile(args["pattern"])
    except re.error as e:
        raise ValueError(f"regex: bad pattern {args['pattern']!r}: {e}") from None


def validate_contains(args: dict[str, Any]) -> None:
    if not any(args.get(k) for k in ("any", "all", "none")):
        raise ValueError("contains: give at least one of any, all, none")
    for k in ("any", "all", "none"):
        v = args.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(w, str | int) for w in v)):
            raise ValueError(f"contains: {k!r} must be a list of strings")
        if v is not None:
            args[k] = [str(w) for w in v]


def validate_choice(args: dict[str, Any]) -> None:
    if str(args.get("answer", "")).upper() not in ("A", "B", "C", "D"):
        raise ValueError("choice: 'answer' must be one of A, B, C, D")
