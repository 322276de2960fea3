"""contains / regex / length / choice and the repetition and truncation hygiene checks, each on
hand-written answers in English and Japanese (eval/checks/text.py, repetition.py)."""

from __future__ import annotations

import pytest

from tameshi.eval.checks import Answer, run_check
from tameshi.eval.checks.repetition import check_repetition, check_truncation


def answer(text: str, lang: str = "en", **kw) -> Answer:
    return Answer(text=text, lang=lang, expect_lang=lang, **kw)


def test_contains_en_and_ja() -> None:
    assert run_check("contains", answer("Ken is Taro's GRANDFATHER."), {"any": ["grandfather"]}).passed
    assert run_check("contains", answer("健は太郎の祖父です。", "ja"), {"any": ["祖父", "おじいさん"]}).passed
    assert run_check("contains", answer("ＴＯＫＹＯ"), {"all": ["tokyo"]}).passed  # NFKC + casefold
    v = run_check("contains", answer("Ken is Taro's uncle."), {"any": ["grandfather", "grandpa"]})
    assert not v.passed and "none of" in v.evidence
    v = run_check("contains", answer("健は太郎の叔父です。", "ja"), {"any": ["祖父"]})
    assert not v.passed
    v = run_check("contains", answer("Ren, not Mika."), {"any": ["Ren"], "none": ["Mika"]})
    assert not v.passed and "forbidden" in v.evidence and "Mika" in v.evidence
    v = run_check("contains", answer("雨が降るので傘を持ってきて。", "ja"), {"all": ["雨", "傘", "明日"]})
    assert not v.passed and "明日" in v.evidence


def test_regex_en_and_ja() -> None:
    assert run_check("regex", answer("OK"), {"pattern": r"\A\W*OK\W*\Z"}).passed
    assert not run_check("regex", answer("OK, sure!"), {"pattern": r"\A\W*OK\W*\Z"}).passed
    assert run_check("regex", answer("了解。", "ja"), {"pattern": r"\A\W*了解\W*\Z"}).passed
    assert not run_check("regex", answer("了解しました。", "ja"), {"pattern": r"\A\W*了解\W*\Z"}).passed
    steps = "1. Boil water\n2. Add egg\n3. Wait\n4. Cool"
    assert run_check(
        "regex", answer(steps), {"pattern": r"^\s*[1-9][.)]", "min_count": 4, "max_count": 4}
    ).passed
    v = run_check("regex", answer(steps + "\n5. Eat"), {"pattern": r"^\s*[1-9][.)]", "max_count": 4})
    assert not v.passed and "5 match(es)" in v.evidence
    # full-width digits match \d after NFKC
    assert run_check("regex", answer("１５分遅れます。", "ja"), {"pattern": r"15"}).passed
    assert run_check("regex", answer("はい", "ja"), {"pattern": "いいえ", "absent": True}).passed
    assert not run_check("regex", answer("TAMESHI"), {"pattern": "tameshi", "ignore_case": False}).passed


def test_length_counts_words_in_english_and_characters_in_japanese() -> None:
    assert run_check("length", answer("Fine, thanks! How was the hike?"), {"max_words": 10}).passed
    v = run_check("length", answer("word " * 61), {"max_words": 60})
    assert not v.passed and "61 words" in v.evidence
    assert run_check("length", answer("元気です。山登りはどうでしたか？", "ja"), {"max_chars": 120}).passed
    v = run_check("length", answer("あ" * 121, "ja"), {"max_chars": 120})
    assert not v.passed and "121 characters" in v.evidence


@pytest.mark.parametrize(
    ("text", "lang", "ok"),
    [
        ("C", "en", True),
        ("C) They weigh the same.", "en", True),
        ("The answer is C.", "en", True),
        ("A bat and a feather… Answer: C", "en", True),  # the article "A" is not an option
        ("B", "en", False),
        ("A or C", "en", False),  # two options named alone: no credit
        ("Cです。", "ja", True),
        ("答えはCです。同じ重さです。", "ja", True),
        ("答え：B", "ja", False),
        ("わかりません。", "ja", False),
    ],
)
def test_choice(text: str, lang: str, ok: bool) -> None:
    v = run_check("choice", answer(text, lang), {"answer": "C"})
    assert v.passed is ok, v.evidence


REPEATING = [
    ("I like cats.\n" * 5, "line repeated"),
    ("The answer is five because the machines work in parallel. " * 4, "passage repeated"),
    ("それは猫です。それは犬です。" + "そしてまた同じことを繰り返します。" * 4, "copies"),
    ("それは猫です。" + "そしてまた同じことを繰り返します。" * 5 + "終わり。", "passage repeated"),
    ("はい" + "は" * 60, "copies"),
    ("Well " + "the " * 20, None),  # any loop sign will do
]


@pytest.mark.parametrize(("text", "why"), REPEATING)
def test_repetition_flags_loops(text: str, why: str | None) -> None:
    v = check_repetition(answer(text), {})
    assert not v.passed and (why is None or why in v.evidence), v.evidence


@pytest.mark.parametrize(
    "text",
    [
        "- miso\n- tofu\n- wakame",
        "1. Boil water.\n2. Add the egg.\n3. Wait 8 minutes.\n4. Cool it in cold water.",
        "材料：\n- ご飯 200g\n- 塩 少々\n- 海苔 1枚\n\n手順：\n1. 手を水で濡らします。\n2. 塩をつけます。\n3. ご飯を握ります。",
        "Title\n=========================================================\nBody text here.",
        "```python\nx = 1\nx = 1\nx = 1\nx = 1\n```",  # code may repeat itself
        "空が青いのは、太陽の光が空気の分子に散乱されるからです。青い光は波長が短く、よく散乱されます。",
    ],
)
def test_repetition_passes_lists_recipes_and_code(text: str) -> None:
    v = check_repetition(answer(text), {})
    assert v.passed, v.evidence


def test_truncation() -> None:
    v = check_truncation(answer("…", finish_reason="length", completion_tokens=64, max_new_tokens=64), {})
    assert not v.passed and "max_new_tokens=64" in v.evidence
    assert check_truncation(answer("Done.", completion_tokens=3), {}).passed
    v = check_truncation(answer("", finish_reason="error", error="prompt too long"), {})
    assert not v.passed and "prompt too long" in v.evidence


def test_a_crashing_checker_fails_its_check_not_the_run() -> None:
    v = run_check("regex", answer("x"), {"pattern": "("})  # a bad pattern that escaped validation
    assert not v.passed and "checker error" in v.evidence
