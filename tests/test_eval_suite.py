"""Probe suites: the shipped ones meet the issue's shape (≥ 40 probes, EN + JA, every category, every
probe checked automatically), user files in the same format load, bad ones fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tameshi.errors import SuiteError
from tameshi.eval.runner import EvalConfig, batches, plan
from tameshi.eval.suite import builtin_suites, load_suite
from tameshi.sampling_params import SamplingParams

CATEGORIES = {
    "arithmetic", "trap", "code", "translation", "persona", "commonsense", "instructions",
    "explanation", "family", "json", "summarisation",
}  # fmt: skip


def test_default_suite_covers_the_issue() -> None:
    suite = load_suite("default")
    assert len(suite.probes) >= 40
    assert set(suite.categories()) == CATEGORIES
    for p in suite.probes:
        assert p.langs == ("en", "ja"), p.id
        assert p.checks, f"{p.id} has no automatic check"
        for spec in p.checks:
            assert spec.args, f"{p.id}: {spec.type} runs in no language"
    checks = {spec.type for p in suite.probes for spec in p.checks}
    assert {"number", "contains", "regex", "json", "code", "choice", "length"} <= checks
    json_args = [spec.args["en"] for p in suite.probes if p.category == "json" for spec in p.checks]
    assert any("schema" in a for a in json_args) and any("schema" not in a for a in json_args)
    translations = [p for p in suite.probes if p.category == "translation"]
    assert all(p.expect_lang("en") == "ja" and p.expect_lang("ja") == "en" for p in translations)
    famous = {p.id for p in suite.probes if "famous" in p.tags}
    assert famous and famous <= {p.variant_of for p in suite.probes if p.variant_of}


def test_smoke_suite_probes_are_copies_of_default_ones() -> None:
    default = {p.id: p for p in load_suite("default").probes}
    smoke = load_suite("smoke")
    assert {"default", "smoke"} <= set(builtin_suites())
    for p in smoke.probes:
        assert p == default[p.id]


USER_SUITE = """
name: mine
probes:
  - id: capital
    category: knowledge
    prompt:
      en: What is the capital of Japan? One word.
      ja: 日本の首都はどこですか？一語で答えてください。
    checks:
      - type: contains
        en: {any: [Tokyo]}
        ja: {any: [東京]}
      - {type: length, max_chars: 40, langs: [ja]}
  - id: english-only
    category: knowledge
    prompt: {en: Say hi.}
"""


def test_a_user_suite_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(USER_SUITE, encoding="utf-8")
    suite = load_suite(str(path))
    capital, english = suite.probes
    assert suite.name == "mine" and len(suite.sha256) == 64
    assert capital.checks[0].args == {"en": {"any": ["Tokyo"]}, "ja": {"any": ["東京"]}}
    assert capital.checks[1].args == {"ja": {"max_chars": 40}}
    assert english.langs == ("en",)
    assert capital.messages("ja") == [
        {"role": "user", "content": "日本の首都はどこですか？一語で答えてください。"}
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("probes: []", "non-empty 'probes' list"),
        ("probes: [{id: a, category: c}]", "'prompt' is required"),
        ("probes: [{id: a, category: c, prompt: hi, colour: red}]", "unknown keys ['colour']"),
        ("probes: [{id: a, category: c, prompt: hi, checks: [{type: telepathy}]}]", "unknown check type"),
        ("probes: [{id: a, category: c, prompt: hi, checks: [{type: number}]}]", "missing ['value']"),
        ("probes: [{id: a, category: c, prompt: hi, checks: [{type: regex, pattern: '('}]}]", "bad pattern"),
        (
            "probes: [{id: a, category: c, prompt: hi, checks: [{type: json, schema: {type: 3}}]}]",
            "JSON Schema",
        ),
        ("probes: [{id: a, category: c, prompt: hi}, {id: a, category: c, prompt: ho}]", "used twice: a"),
        ("probes: [{id: a, category: c, prompt: hi, variant_of: b}]", "variant_of 'b'"),
        ("probes: [{id: a, category: c, prompt: {fr: salut}}]", "mapping of en/ja"),
        ("probes:\n  - id: a\n   category: c", "not valid UTF-8 YAML (line"),
    ],
)
def test_bad_suites_fail_with_one_line_naming_file_and_probe(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(SuiteError) as e:
        load_suite(str(path))
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_suite_names_list_the_builtin_ones() -> None:
    with pytest.raises(SuiteError, match="built in: default, smoke"):
        load_suite("nonesuch")
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite("nonesuch.yaml")


def test_plan_and_batches() -> None:
    suite = load_suite("default")
    params = SamplingParams(max_new_tokens=300, seed=1)
    jobs = plan(suite, params, EvalConfig(langs=("ja",), repeat=2, only=("json", "arith-multiply")))
    assert {j.probe.category for j in jobs} == {"json", "arithmetic"} and {j.lang for j in jobs} == {"ja"}
    assert len(jobs) == 2 * 6 and max(j.max_new_tokens for j in jobs) == 300  # the run's cap lowers a probe's
    groups = batches(jobs, 4)
    assert sum(map(len, groups)) == len(jobs) and max(map(len, groups)) <= 4
    for g in groups:  # a batch shares its token cap and repeat (so its seed)
        assert len({(j.max_new_tokens, j.repeat) for j in g}) == 1


def test_a_selection_with_no_probe_is_refused_with_what_there_is():
    """--only naming nothing in the suite, or languages none of the kept probes has: an error that
    names the unknown selection or the languages there are, not an empty run saved as if it passed."""
    import dataclasses

    import pytest

    from tameshi.errors import SuiteError
    from tameshi.eval.runner import EvalConfig, plan
    from tameshi.eval.suite import load_suite
    from tameshi.sampling_params import SamplingParams

    suite = load_suite("smoke")
    with pytest.raises(SuiteError, match="no probe or category 'nosuchprobe' in suite 'smoke'"):
        plan(suite, SamplingParams(), EvalConfig(only=("nosuchprobe",)))
    first = suite.probes[0]
    english = dataclasses.replace(
        suite, probes=(dataclasses.replace(first, prompt={"en": first.prompt["en"]}),)
    )
    with pytest.raises(SuiteError, match=r"selected here is in ja \(they are in en\)"):
        plan(english, SamplingParams(), EvalConfig(langs=("ja",)))
    assert plan(suite, SamplingParams(), EvalConfig())
