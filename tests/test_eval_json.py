"""The `json` check: JSON found in prose or fences, parsed, validated with `jsonschema`, values compared."""

from __future__ import annotations

import pytest

from tameshi.eval.checks import Answer, run_check
from tameshi.eval.checks.json_checks import extract_json, validate_json

PRODUCT = {
    "type": "object",
    "required": ["name", "price_yen", "in_stock"],
    "properties": {
        "name": {"type": "string"},
        "price_yen": {"type": "integer"},
        "in_stock": {"type": "boolean"},
    },
}
STRICT = {"strict": True, "schema": PRODUCT, "expect": {"price_yen": 520, "in_stock": False}}


def answer(text: str, lang: str = "en") -> Answer:
    return Answer(text=text, lang=lang, expect_lang=lang)


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Matcha latte", "price_yen": 520, "in_stock": false}',
        '```json\n{"name": "抹茶ラテ", "price_yen": 520, "in_stock": false}\n```',  # a fence alone is fine
    ],
)
def test_strict_json_with_schema_passes(text: str) -> None:
    v = run_check("json", answer(text), STRICT)
    assert v.passed and "schema and values ok" in v.evidence, v.evidence


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('Sure! {"name": "Matcha latte", "price_yen": 520, "in_stock": false}', "not JSON"),
        ('こちらです：\n```json\n{"name": "抹茶ラテ", "price_yen": 520, "in_stock": false}\n```', "not JSON"),
        ('{"name": "Matcha latte", "price_yen": "520", "in_stock": false}', "is not of type 'integer'"),
        ('{"name": "抹茶ラテ", "price_yen": 520}', "'in_stock' is a required property"),
        ('{"name": "Matcha latte", "price_yen": 520, "in_stock": true}', "in_stock = true"),
        ('{"name": "Matcha latte", "price_yen": 520, "in_stock": false,}', "not JSON"),  # trailing comma
    ],
)
def test_strict_json_failures_say_why(text: str, why: str) -> None:
    v = run_check("json", answer(text), STRICT)
    assert not v.passed and why in v.evidence, v.evidence


def test_free_json_is_found_inside_prose_in_both_languages() -> None:
    en = 'Here it is: {"name": "Haruka Sato", "age": 34, "city": "Sapporo"}. Anything else?'
    ja = 'JSONは以下の通りです。\n```\n{"名前": "佐藤遥", "年齢": 34, "都市": "札幌"}\n```'
    assert run_check("json", answer(en), {"contains_values": ["34", "Sapporo", "Haruka"]}).passed
    assert run_check("json", answer(ja, "ja"), {"contains_values": ["34", "札幌", "遥"]}).passed
    v = run_check("json", answer(ja, "ja"), {"contains_values": ["東京"]})
    assert not v.passed and "values missing ['東京']" in v.evidence
    v = run_check("json", answer("名前は佐藤遥、34歳、札幌です。", "ja"), {})
    assert not v.passed and "no JSON" in v.evidence


def test_array_schema_and_nested_objects() -> None:
    islands = {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "string"}}
    assert run_check("json", answer('["本州", "北海道", "九州"]', "ja"), {"schema": islands}).passed
    v = run_check("json", answer('["Honshu", "Hokkaido"]'), {"schema": islands})
    assert not v.passed and "too short" in v.evidence
    value, where = extract_json('Result:\n```json\n{"items": [{"name": "milk", "quantity": 2}]}\n```')
    assert where == "fenced block" and value["items"][0]["quantity"] == 2


def test_expect_compares_nested_values_and_normalises_strings() -> None:
    text = '{"date": "2025-04-18", "time": "１２:３０", "people": 6, "place": {"name": "Kappa Sushi"}}'
    args = {"expect": {"time": "12:30", "people": 6.0, "place": {"name": "kappa sushi"}}}
    assert run_check("json", answer(text), args).passed
    assert not run_check("json", answer(text), {"expect": {"people": True}}).passed  # 6 is not true


def test_bad_schemas_are_refused_when_the_suite_loads() -> None:
    with pytest.raises(ValueError, match="not valid JSON Schema"):
        validate_json({"schema": {"type": "no-such-type"}})
