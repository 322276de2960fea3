"""Checkers: the check types a suite file may name, and the hygiene checks every answer gets."""

from __future__ import annotations

from typing import Any

from tameshi.eval.checks.base import Answer, Checker, Verdict
from tameshi.eval.checks.code_runner import check_code, validate_code
from tameshi.eval.checks.json_checks import check_json, validate_json
from tameshi.eval.checks.language import check_language, check_script_purity
from tameshi.eval.checks.numbers import check_number, validate_number
from tameshi.eval.checks.repetition import check_repetition, check_truncation
from tameshi.eval.checks.text import (
    check_choice,
    check_contains,
    check_length,
    check_regex,
    validate_choice,
    validate_contains,
    validate_regex,
)

CHECKERS: dict[str, Checker] = {
    "number": Checker(check_number, ("value",), ("unit", "tolerance", "pick"), validate_number),
    "contains": Checker(check_contains, (), ("any", "all", "none"), validate_contains),
    "regex": Checker(
        check_regex, ("pattern",), ("min_count", "max_count", "absent", "ignore_case"), validate_regex
    ),
    "length": Checker(check_length, (), ("max_words", "min_words", "max_chars", "min_chars")),
    "choice": Checker(check_choice, ("answer",), (), validate_choice),
    "json": Checker(check_json, (), ("schema", "expect", "contains_values", "strict"), validate_json),
    "code": Checker(check_code, ("function", "tests"), ("timeout",), validate_code),
}


def hygiene_checks(answer: Answer) -> list[Verdict]:
    """Run on every answer: truncation, repetition, language, and script purity for Japanese."""
    verdicts = [check_truncation(answer, {}), check_repetition(answer, {}), check_language(answer, {})]
    if answer.expect_lang == "ja":
        verdicts.append(check_script_purity(answer, {}))
    return verdicts


def run_check(kind: str, answer: Answer, args: dict[str, Any]) -> Verdict:
    """One check; a checker that crashes fails its check with the error as evidence, never the run."""
    try:
        return CHECKERS[kind].fn(answer, args)
    except Exception as e:  # a checker bug must not lose the other probes' results
        return Verdict(kind, False, f"checker error: {type(e).__name__}: {e}")


__all__ = ["CHECKERS", "Answer", "Checker", "Verdict", "hygiene_checks", "run_check"]
