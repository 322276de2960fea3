"""Which language an answer is in, and whether Japanese text has Chinese mixed in (script purity).

Detection counts scripts, not words: kana only occur in Japanese, so kanji with kana is Japanese and
kanji without kana is Chinese; Latin prose is English when English function words make up a fair share.
Code (fenced or inline) and JSON keys are removed first: they follow the requested format and say nothing
about the language of the answer (a Japanese answer may well be `{"name": "抹茶ラテ"}`).

Purity (run on answers that should be Japanese) reports, with the offending characters:
  1. ideographs and CJK punctuation that neither cp932 nor JIS X 0208 (Python's shift_jis) can encode —
     most simplified-only forms (这 说 们); two codecs because each maps a few symbols differently
     (〜 U+301C is shift_jis only, ～ U+FF5E cp932 only), and clean Japanese uses both;
  2. characters on the hand-checked lists in `cjk_forms` (个 价 in JIS but simplified; 國 說 traditional);
  3. Chinese punctuation: "，" or "；" inside a sentence with ideographs and no kana (Japanese writers who
     use "，" — science papers, older official style — always have kana in the same sentence);
  4. Chinese sentences: ≥ 8 ideographs, no kana, and ≥ 2 Chinese function characters (的 是 了 在 …).
Not flagged: kana, kanji, full-width digits/letters, 「」『』・ー～〜！？（）、。, emoji, Latin text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tameshi.eval.checks.base import Answer, Verdict, clip, strip_code
from tameshi.eval.checks.cjk_forms import JOYO_OUTSIDE_JIS0208, describe

_EN_FUNCTION = frozenset(
    [
        "the",
        "a",
        "an",
        "is",
        "are",
        "was",
        "were",
        "be",
        "of",
        "and",
        "or",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "it",
        "this",
        "that",
        "you",
        "i",
        "we",
        "they",
        "he",
        "she",
        "not",
        "no",
        "yes",
        "can",
        "will",
        "do",
        "does",
        "have",
        "has",
        "my",
        "your",
        "its",
        "as",
        "by",
        "from",
        "but",
        "so",
        "if",
    ]
)
_ZH_FUNCTION = frozenset("的是了在我你他们这那吗呢吧有不也就都很说要和个么")
_SENTENCE = re.compile(r"[^。！？!?\n]+[。！？!?]?")
_JSON_KEY = re.compile(r'"[^"\n]{1,60}"\s*:')


def is_kana(c: str) -> bool:
    return "\u3040" <= c <= "\u309f" or "\u30a0" <= c <= "\u30ff" or "\uff66" <= c <= "\uff9f"


def is_han(c: str) -> bool:
    o = ord(c)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x3FFFF
        or c in "々〆"
    )


def _is_cjk_symbol(c: str) -> bool:
    o = ord(c)
    return 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF or 0xFE10 <= o <= 0xFE6F


@dataclass(frozen=True)
class ScriptCounts:
    kana: int
    han: int
    latin_letters: int
    latin_words: int
    en_function_words: int
    hangul: int
    other_letters: int


def count_scripts(text: str) -> ScriptCounts:
    kana = sum(map(is_kana, text))
    han = sum(map(is_han, text))
    words = re.findall(r"[A-Za-zÀ-ɏ']+", text)
    hangul = sum("\uac00" <= c <= "\ud7af" for c in text)
    latin = sum(len(w) for w in words)
    other = sum(c.isalpha() for c in text) - kana - han - hangul - latin
    en = sum(w.lower().strip("'") in _EN_FUNCTION for w in words)
    return ScriptCounts(kana, han, latin, len(words), en, hangul, max(other, 0))


def detect_language(text: str) -> tuple[str, ScriptCounts]:
    """ "en", "ja", "zh", "ko", "other" or "unknown" (too little prose to tell) for the answer's prose."""
    s = count_scripts(_JSON_KEY.sub(" ", strip_code(text)))
    cjk = s.kana + s.han
    latin_units = s.latin_letters / 2  # a kanji or kana carries about as much as two Latin letters
    if s.hangul > max(cjk, latin_units):
        return "ko", s
    if cjk + latin_units + s.other_letters < 3:
        return "unknown", s
    if s.other_letters > max(cjk, latin_units):
        return "other", s
    if cjk >= latin_units:
        if s.kana >= 0.1 * cjk or (s.kana >= 1 and s.han < 10):
            return "ja", s
        return ("zh", s) if s.han >= 4 else ("unknown", s)
    if s.latin_words <= 3:
        return "unknown", s
    return ("en" if s.en_function_words >= 0.08 * s.latin_words else "other"), s


def check_language(answer: Answer, args: dict[str, Any]) -> Verdict:
    want = args.get("expect") or answer.expect_lang
    got, s = detect_language(answer.text)
    counts = f"kana {s.kana}, kanji {s.han}, Latin words {s.latin_words}"
    if got == "unknown":
        return Verdict("language", True, f"too little prose to tell ({counts})", kind="hygiene")
    ok = got == want
    return Verdict("language", ok, f"reads as {got}, expected {want} ({counts})", kind="hygiene")


def _encodable(c: str) -> bool:
    for codec in ("cp932", "shift_jis"):
        try:
            c.encode(codec)
            return True
        except UnicodeEncodeError:
            pass
    return False


@dataclass(frozen=True)
class Finding:
    rule: str  # "not-in-JIS", "chinese-form", "chinese-punctuation", "chinese-sentence"
    text: str  # the offending character(s) or sentence
    note: str

    def __str__(self) -> str:
        return f"{self.text} ({self.note})"


def purity_findings(text: str) -> list[Finding]:
    """Everything in `text` that Japanese does not write, per the module's rules; empty if clean."""
    findings: list[Finding] = []
    seen: set[str] = set()
    for c in text:
        if c in seen or not (is_han(c) or _is_cjk_symbol(c)):
            continue
        seen.add(c)
        why = describe(c)
        if why:
            findings.append(Finding("chinese-form", c, f"U+{ord(c):04X}, {why}"))
        elif c not in JOYO_OUTSIDE_JIS0208 and not _encodable(c):
            findings.append(Finding("not-in-JIS", c, f"U+{ord(c):04X}, not in JIS X 0208/cp932"))
    for m in _SENTENCE.finditer(text):
        sentence = m.group(0).strip()
        if not sentence or any(map(is_kana, sentence)):
            continue
        han = sum(map(is_han, sentence))
        punct = [p for p in "，；" if p in sentence]
        if punct and han >= 2:
            note = f"Chinese punctuation {' '.join(punct)} in a sentence without kana"
            findings.append(Finding("chinese-punctuation", clip(sentence, 40), note))
        zh = [c for c in sentence if c in _ZH_FUNCTION]
        if han >= 8 and len(zh) >= 2:
            note = f"no kana, Chinese function characters {''.join(dict.fromkeys(zh))}"
            findings.append(Finding("chinese-sentence", clip(sentence, 40), note))
    return findings


def check_script_purity(answer: Answer, args: dict[str, Any]) -> Verdict:
    findings = purity_findings(strip_code(answer.text))
    if not findings:
        return Verdict("script_purity", True, "no Chinese-only characters or punctuation", kind="hygiene")
    by_rule = Counter(f.rule for f in findings)
    head = ", ".join(f"{n} {rule}" for rule, n in by_rule.items())
    shown = "; ".join(str(f) for f in findings[:6]) + (" …" if len(findings) > 6 else "")
    return Verdict("script_purity", False, f"{head}: {shown}", kind="hygiene")
