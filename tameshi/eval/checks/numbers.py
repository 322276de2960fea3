"""Numbers in answers, as people write them in English and Japanese, and the `number` check.

Finds "391", "１，０２３" (full-width, NFKC), "1,000", "$0.05", "5 cents", "5¢", "0.05 dollars",
"5セント", "375円", "¥375", "3/4", "4分の3", "1万2千円", "五百円", "three", "forty-two". A unit, when
written, converts: with `unit: usd`, "5 cents" is 0.05 and "375円" does not count.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from tameshi.eval.checks.base import Answer, Verdict

_KANJI_DIGITS = {
    "〇": 0,
    "零": 0,
    "一": 1,
    "二": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_KANJI_SMALL = {"十": 10, "百": 100, "千": 1000}
_KANJI_LARGE = {"万": 10**4, "億": 10**8, "兆": 10**12}
_WORDS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_WORDS.update(
    {
        w: 10 * i
        for i, w in enumerate(
            ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], 2
        )
    }
)
_UNITS = {
    "usd": ("dollars", "dollar", "usd", "ドル", "$"),
    "cent": ("cents", "cent", "セント", "¢"),
    "yen": ("円", "yen", "¥", "えん"),
    "percent": ("%", "percent", "パーセント"),
}
_UNIT_RE = "|".join(re.escape(u) for units in _UNITS.values() for u in sorted(units, key=len, reverse=True))
_KANJI_NUM = "〇零一二三四五六七八九十百千万億兆"
# A lone kanji numeral is usually part of a word (一緒, 統一); count it only before a counter or unit.
_COUNTERS = "円個人本匹枚冊台歳回日年月時分秒倍つ番枚杯羽頭階度点"
_NUMBER = re.compile(
    r"(?P<cur>[$¥])?\s?"
    r"(?:(?P<jden>\d+(?:\.\d+)?)分の(?P<jnum>\d+(?:\.\d+)?)"  # 4分の3 = 3/4
    r"|(?P<sign>(?<![\w)])[-−])?(?<![\d/.,])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:/(?P<den>\d+)(?![\d/]))?"
    r"(?P<mult>[万億千](?:\d+[千百])?)?"
    rf"|(?P<kanji>[{_KANJI_NUM}]{{2,}}|[{_KANJI_NUM}](?=[{_COUNTERS}]|ドル|セント))"
    r"|\b(?P<words>(?:(?:" + "|".join(sorted(_WORDS, key=len, reverse=True)) + r")(?:[- ](?=[a-z]))?)+)\b"
    r")"
    rf"\s?(?P<unit>(?:{_UNIT_RE})(?![a-z]))?",
    re.I,
)
# Where an answer says "this is my answer"; the number after the last one is the one judged.
_MARKER = re.compile(
    r"(?:final answer|the answer is|answer\s*[:：]|answer\s*=|答えは|答え\s*[:：]|答\s*[:：]|正解は|解答\s*[:：]|結論\s*[:：])",
    re.I,
)
_SPRAY = 10  # more distinct numbers than this, and no marked answer: too many guesses to credit one


@dataclass(frozen=True)
class Number:
    value: float
    unit: str | None  # "usd", "cent", "yen", "percent" or None
    text: str
    pos: int


def kanji_to_int(s: str) -> int | None:
    """五百 → 500, 三千二百十 → 3210, 二〇二四 → 2024, 十 → 10, 万 → 10000; None if not a numeral."""
    if not s:
        return None
    if all(c in _KANJI_DIGITS for c in s):  # positional, like 二〇二四
        return int("".join(str(_KANJI_DIGITS[c]) for c in s))
    total = section = digit = 0
    for c in s:
        if c in _KANJI_DIGITS:
            digit = _KANJI_DIGITS[c]
        elif c in _KANJI_SMALL:
            section += (digit or 1) * _KANJI_SMALL[c]
            digit = 0
        elif c in _KANJI_LARGE:
            total += (section + digit or 1) * _KANJI_LARGE[c]  # a bare 万 is 一万
            section = digit = 0
        else:
            return None
    return total + section + digit


def _words_to_int(s: str) -> int | None:
    value = 0
    for word in re.split(r"[- ]+", s.lower()):
        if word not in _WORDS:
            return None
        value += _WORDS[word]
    return value


def _unit_of(s: str | None, currency: str | None) -> str | None:
    if currency:
        return "usd" if currency == "$" else "yen"
    if not s:
        return None
    low = s.lower()
    return next(name for name, units in _UNITS.items() if low in units)


def _mult(s: str | None) -> float:
    """万 → 10⁴; "万2千" (from 1万2千) → the 万 applies to the lead number, the rest is added later."""
    if not s:
        return 1.0
    return {"万": 1e4, "億": 1e8, "千": 1e3}[s[0]]


def find_numbers(text: str) -> list[Number]:
    norm = unicodedata.normalize("NFKC", text).replace("⁄", "/")
    found: list[Number] = []
    for m in _NUMBER.finditer(norm):
        g = m.groupdict()
        if g["jden"]:
            value = float(g["jnum"]) / float(g["jden"]) if float(g["jden"]) else math.nan
        elif g["num"]:
            value = float(g["num"].replace(",", ""))
            if g["den"]:
                value = value / float(g["den"]) if float(g["den"]) else math.nan
            value *= _mult(g["mult"]) * (-1 if g["sign"] else 1)
            if g["mult"] and len(g["mult"]) > 1:  # 1万2千: the tail "2千" adds 2000
                tail = re.match(r"(\d+)([千百])", g["mult"][1:])
                value += float(tail.group(1)) * (1000 if tail.group(2) == "千" else 100) if tail else 0
        elif g["kanji"]:
            parsed = kanji_to_int(g["kanji"])
            if parsed is None:
                continue
            value = float(parsed)
        elif g["words"]:
            parsed = _words_to_int(g["words"].strip())
            if parsed is None:
                continue
            value = float(parsed)
        else:
            continue
        if math.isnan(value):
            continue
        found.append(Number(value, _unit_of(g["unit"], g["cur"]), m.group(0).strip(), m.start()))
    return found


def in_unit(n: Number, unit: str | None) -> float | None:
    """The number's value in `unit`, or None if its written unit cannot be that."""
    if unit is None or n.unit is None or n.unit == unit:
        return n.value
    if unit == "usd" and n.unit == "cent":
        return n.value / 100
    if unit == "cent" and n.unit == "usd":
        return n.value * 100
    return None


def _fmt(n: Number) -> str:
    return n.text


def check_number(answer: Answer, args: dict[str, Any]) -> Verdict:
    """`value` (required), `unit` (usd|cent|yen|percent), `tolerance` (absolute), `pick` (answer|last|any).

    pick=answer (default): the number after the last answer marker ("Answer:", "答えは" …) is judged.
    With no marker it depends on whether the question itself holds the expected value. If it does (five
    machines, five minutes, 100 machines: how long?), finding it proves nothing, since answers restate the
    question, so the last number counts. If it does not, the model wrote the value itself, so finding it
    anywhere counts, unless the answer sprays > 10 distinct numbers. pick=last / any force one rule.
    """
    expected = float(args["value"])
    unit = args.get("unit")
    tol = float(args.get("tolerance", 0.0))
    pick = args.get("pick", "answer")

    def same(n: Number) -> bool:
        v = in_unit(n, unit)
        return v is not None and math.isclose(v, expected, rel_tol=1e-9, abs_tol=max(tol, 1e-9))

    numbers = find_numbers(answer.text)
    seen = ", ".join(_fmt(n) for n in numbers[:12]) + (" …" if len(numbers) > 12 else "")
    want = f"{args['value']}{' ' + unit if unit else ''}"
    if not numbers:
        return Verdict("number", False, f"no number found; expected {want}")
    markers = list(_MARKER.finditer(unicodedata.normalize("NFKC", answer.text)))
    if pick == "answer" and markers:
        after = [n for n in numbers if n.pos >= markers[-1].end()]
        if after:
            ok = same(after[0])
            return Verdict("number", ok, f"marked answer {_fmt(after[0])}; expected {want}")
    echoed = pick == "answer" and any(same(n) for n in find_numbers(answer.question))
    if pick == "last" or echoed:
        why = "last number" if pick == "last" else f"the question holds {want}, so the last number counts:"
        return Verdict("number", same(numbers[-1]), f"{why} {_fmt(numbers[-1])}; expected {want}")
    distinct = {round(n.value, 9) for n in numbers}
    if pick == "answer" and len(distinct) > _SPRAY:
        return Verdict("number", False, f"{len(distinct)} different numbers and no marked answer: {seen}")
    ok = any(same(n) for n in numbers)
    return Verdict("number", ok, f"{'found' if ok else 'not found'} {want} among: {seen}")


def validate_number(args: dict[str, Any]) -> None:
    if not isinstance(args.get("value"), int | float) or isinstance(args.get("value"), bool):
        raise ValueError("number: 'value' must be a number")
    if args.get("unit") not in (None, *_UNITS):
        raise ValueError(f"number: 'unit' must be one of {', '.join(_UNITS)}")
    if args.get("pick", "answer") not in ("answer", "last", "any"):
        raise ValueError("number: 'pick' must be answer, last or any")
