"""The `number` check reads numbers as people write them in English and Japanese (eval/checks/numbers.py)."""

from __future__ import annotations

import pytest

from tameshi.eval.checks import Answer, run_check
from tameshi.eval.checks.numbers import find_numbers, kanji_to_int


def answer(text: str, lang: str = "en") -> Answer:
    return Answer(text=text, lang=lang, expect_lang=lang)


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("１，０２３", 1023, None),  # full-width digits and comma
        ("1,000,000", 1_000_000, None),
        ("$0.05", 0.05, "usd"),
        ("5 cents", 5, "cent"),
        ("5¢", 5, "cent"),
        ("0.05 dollars", 0.05, "usd"),
        ("375円", 375, "yen"),
        ("¥375", 375, "yen"),
        ("5セント", 5, "cent"),
        ("3/4", 0.75, None),
        ("4分の3", 0.75, None),
        ("1万2千円", 12000, "yen"),
        ("五百円", 500, "yen"),
        ("三千二百十", 3210, None),
        ("forty-two", 42, None),
        ("12.5%", 12.5, "percent"),
        ("-5", -5, None),
    ],
)
def test_find_numbers_reads_each_written_form(text: str, value: float, unit: str | None) -> None:
    [n] = find_numbers(text)
    assert n.value == pytest.approx(value) and n.unit == unit


def test_lone_kanji_numerals_inside_words_are_not_numbers() -> None:
    assert find_numbers("一緒に統一しましょう") == []  # 一 in 一緒 / 統一 is part of a word
    assert [n.value for n in find_numbers("りんごを三つ")] == [3]  # before a counter it is a number


def test_kanji_to_int() -> None:
    assert kanji_to_int("二〇二四") == 2024 and kanji_to_int("十") == 10 and kanji_to_int("百二十") == 120
    assert kanji_to_int("万") == 10_000 and kanji_to_int("猫") is None


@pytest.mark.parametrize(
    ("text", "lang", "args"),
    [
        ("The ball costs $0.05.", "en", {"value": 0.05, "unit": "usd"}),
        ("The ball costs 5 cents.", "en", {"value": 0.05, "unit": "usd"}),  # "0.05" vs "5 cents"
        ("It is 50 cents.", "en", {"value": 0.5, "unit": "usd"}),  # "0.5" vs "50 cents"
        ("17 × 23 = 391", "en", {"value": 391}),
        ("The sum is three quarters, i.e. 0.75.", "en", {"value": 0.75}),
        ("ボールは５円です。", "ja", {"value": 5, "unit": "yen"}),  # full-width digit + 円
        ("答えは１０２３です。", "ja", {"value": 1023}),
        ("合計で4分の3になります。", "ja", {"value": 0.75}),
        ("五つで六百円です。", "ja", {"value": 600, "unit": "yen"}),
        ("おつりは375円です。", "ja", {"value": 375, "unit": "yen"}),
    ],
)
def test_number_check_passes_right_answers(text: str, lang: str, args: dict) -> None:
    v = run_check("number", answer(text, lang), args)
    assert v.passed, v.evidence


@pytest.mark.parametrize(
    ("text", "lang", "args", "why"),
    [
        ("The ball costs $0.10.", "en", {"value": 0.05, "unit": "usd"}, "not found"),
        ("The ball costs 10 cents.", "en", {"value": 0.05, "unit": "usd"}, "not found"),
        ("The ball costs 5 yen.", "en", {"value": 0.05, "unit": "usd"}, "not found"),  # wrong unit
        ("I do not know.", "en", {"value": 391}, "no number"),
        ("5 × 5 = 25, but the answer is 100 minutes.", "en", {"value": 5}, "marked answer 100"),
        ("ボールは10円です。", "ja", {"value": 5, "unit": "yen"}, "not found"),
        ("答えは100分です。5台で5分なので。", "ja", {"value": 5}, "marked answer 100"),
        ("わかりません。", "ja", {"value": 1023}, "no number"),
    ],
)
def test_number_check_fails_wrong_answers(text: str, lang: str, args: dict, why: str) -> None:
    v = run_check("number", answer(text, lang), args)
    assert not v.passed and why in v.evidence, v.evidence


def test_a_spray_of_numbers_without_a_marked_answer_fails() -> None:
    text = " ".join(str(i) for i in range(1, 20))
    v = run_check("number", answer(text), {"value": 7})
    assert not v.passed and "different numbers" in v.evidence
    assert run_check("number", answer(text + " Answer: 7"), {"value": 7}).passed


def test_pick_last_and_tolerance() -> None:
    assert not run_check("number", answer("391, no wait, 392"), {"value": 391, "pick": "last"}).passed
    assert run_check("number", answer("about 3.14"), {"value": 3.14159, "tolerance": 0.01}).passed


WIDGETS_EN = "Five machines need five minutes to make five widgets. How many minutes would 100 machines need?"
WIDGETS_JA = (
    "5台の機械で5個の部品を作るのに5分かかります。100台の機械で100個の部品を作るには何分かかりますか？"
)


@pytest.mark.parametrize(
    ("text", "question", "ok"),
    [
        ("It takes 5 minutes.", WIDGETS_EN, True),
        (
            "If 5 machines make 5 widgets in 5 minutes, 100 machines make 100 widgets in 5 minutes.",
            WIDGETS_EN,
            True,
        ),
        ("5 machines take 5 minutes for 5 widgets, so 100 machines take 100 minutes.", WIDGETS_EN, False),
        ("5分です。", WIDGETS_JA, True),
        ("5台で5分なので、100台では100分かかります。", WIDGETS_JA, False),
    ],
)
def test_a_value_the_question_holds_counts_only_as_the_last_number(
    text: str, question: str, ok: bool
) -> None:
    lang = "ja" if question == WIDGETS_JA else "en"
    v = run_check("number", Answer(text, lang, lang, question=question), {"value": 5})
    assert v.passed is ok and "the question holds 5" in v.evidence, v.evidence


def test_a_value_the_model_wrote_itself_counts_anywhere() -> None:
    q = "A bat and a ball cost $1.10. The bat costs $1.00 more than the ball. What does the ball cost?"
    text = "The ball costs $0.05 and the bat costs $1.05, which makes $1.10 together."
    v = run_check("number", Answer(text, "en", "en", question=q), {"value": 0.05, "unit": "usd"})
    assert v.passed and "found 0.05 usd among" in v.evidence
