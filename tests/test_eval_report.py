"""Run files and reports without a model: hand-written answers to the smoke suite go through the real
checks into JSONL runs; the summary, the Markdown and the HTML are checked on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tameshi.errors import RunFileError
from tameshi.eval.checks import Answer
from tameshi.eval.records import Record, RunHeader, RunWriter, find_runs, read_run
from tameshi.eval.report import write_report
from tameshi.eval.report_html import html_report
from tameshi.eval.runner import check_answer
from tameshi.eval.suite import load_suite
from tameshi.eval.summary import summarise

PALINDROME = "```python\ndef is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n```"
GOOD = {
    ("arith-multiply", "en"): "17 × 23 = 391.",
    ("arith-multiply", "ja"): "答えは391です。",
    ("crt-bat-ball", "en"): "The ball costs $0.05.",
    ("crt-bat-ball", "ja"): "ボールは5円です。",
    ("code-palindrome", "en"): PALINDROME,
    ("code-palindrome", "ja"): PALINDROME,
    ("tr-thanks", "en"): "昨日は助けてくれてありがとう。",
    ("tr-thanks", "ja"): "In winter, this lake freezes completely.",
    ("fam-grandfather", "en"): "Ken is Taro's grandfather.",
    ("fam-grandfather", "ja"): "健は太郎の祖父です。",
    ("json-format", "en"): '{"name": "Matcha latte", "price_yen": 520, "in_stock": false}',
    ("json-format", "ja"): '{"name": "抹茶ラテ", "price_yen": 520, "in_stock": false}',
}
# A weaker model: wrong in places, Chinese in its Japanese, a loop, a cut-off.
WEAK = {
    **GOOD,
    ("crt-bat-ball", "en"): "The ball costs $0.10.",
    ("crt-bat-ball", "ja"): "球的价格是10日元，这个问题很简单。",
    ("fam-grandfather", "ja"): "健は太郎の祖父です。" + "健は太郎の祖父です。\n" * 4,
    ("json-format", "ja"): '{"name": "抹茶ラテ", "price_yen": 5',
}


def write_run(folder: Path, model: str, answers: dict, cut: set | frozenset = frozenset()) -> Path:
    suite = load_suite("smoke")
    header = RunHeader(
        run_id=f"run-{model}", model=model, model_path=f"/models/{model} (hf-folder)",
        params={"do_sample": False, "temperature": 1.0, "max_new_tokens": 256, "repetition_penalty": 1.0},
        preset=None, suite=suite.name, suite_path=suite.path, suite_sha256=suite.sha256, langs=["en", "ja"],
        repeat=1, tameshi_version="test", started="2026-01-02T03:04:05+09:00", device="cpu / float32",
    )  # fmt: skip
    writer = RunWriter(folder / f"run-{model}.jsonl", header)
    for probe in suite.probes:
        for lang in probe.langs:
            reason = "length" if (probe.id, lang) in cut else "stop"
            text, expect = answers[probe.id, lang], probe.expect_lang(lang)
            ans = Answer(text, lang, expect, reason, 20, 256, question=probe.prompt[lang])
            checks = check_answer(probe, lang, ans)
            writer.record(
                Record(
                    probe=probe.id,
                    category=probe.category,
                    lang=lang,
                    expect_lang=ans.expect_lang,
                    repeat=0,
                    tags=list(probe.tags),
                    variant_of=probe.variant_of,
                    messages=probe.messages(lang),
                    prompt=f"<|im_start|>user\n{probe.prompt[lang]}<|im_end|>",
                    output=ans.text,
                    finish_reason=reason,
                    error=None,
                    prompt_tokens=30,
                    completion_tokens=20,
                    max_new_tokens=256,
                    batch_seconds=1.0,
                    batch_size=12,
                    checks=[c.to_json() for c in checks],
                    passed=all(c.passed for c in checks),
                )
            )
    writer.close({"seconds": 12.0, "complete": True, "answers": 12, "tokens_per_second": 20.0})
    return writer.path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        write_run(tmp_path, "good", GOOD),
        write_run(tmp_path, "weak", WEAK, cut={("code-palindrome", "en")}),
    ]


def test_run_files_round_trip(runs: list[Path]) -> None:
    run = read_run(runs[1])
    assert run.header.model == "weak" and run.footer and run.footer["complete"]
    assert len(run.records) == 12 and all(r.checks for r in run.records)
    lines = [json.loads(line) for line in runs[1].read_text(encoding="utf-8").splitlines()]
    assert [x["type"] for x in (lines[0], lines[1], lines[-1])] == ["header", "record", "footer"]
    assert "球的价格" in runs[1].read_text(encoding="utf-8")  # ensure_ascii=False: readable Japanese


def test_summary_counts(runs: list[Path]) -> None:
    good, weak = (summarise(read_run(p)) for p in runs)
    assert good.by_lang["en"].rate == 1.0 and good.by_lang["ja"].rate == 1.0 and good.gap() == "+0"
    assert weak.cell("trap", "en").passed == 0 and weak.cell("trap", "ja").passed == 0
    assert (
        weak.flags[("Chinese in Japanese", "ja")] == 1
        and weak.flag_checked[("Chinese in Japanese", "ja")] == 5
    )
    assert ("Chinese in Japanese", "en") in weak.flag_checked  # the EN prompt of tr-thanks expects Japanese
    assert weak.flags[("repetition", "ja")] == 1 and weak.flags[("truncated", "en")] == 1
    assert weak.flags[("wrong language", "ja")] == 1  # the Chinese answer reads as zh
    assert weak.by_lang["en"].passed == 4 and weak.by_lang["ja"].passed == 3
    assert weak.gap() == f"{100 * (4 / 6 - 3 / 6):+.0f}"


def test_markdown_report(runs: list[Path], tmp_path: Path) -> None:
    report = write_report(runs, tmp_path / "out" / "report.html")
    md = report.markdown
    assert "| category | #1 EN | #1 JA | #1 gap | #2 EN | #2 JA | #2 gap |" in md
    assert "| trap | 100% (1/1) | 100% (1/1) | +0 | 0% (0/1) | 0% (0/1) | +0 |" in md
    assert "| **all** | 100% (6/6) | 100% (6/6) | +0 | 67% (4/6) | 50% (3/6) | +17 |" in md
    assert "| #2 | JA | 67% | 0/6 | 1/6 | 1/6 | 1/5 | 0 |" in md  # flags: truncated, loop, language, Chinese
    assert "no judge (automatic checks only)" in md
    assert report.html_path.is_file()


def test_html_report_is_self_contained_and_highlights_failures(runs: list[Path]) -> None:
    html = html_report([summarise(read_run(p)) for p in runs])
    assert '<table id="summary"' in html and '<table id="flags"' in html and 'class="answers"' in html
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 3  # two runs + one across
    for needle in ("<script", "http://", "https://", "<link", "@import", "url("):
        assert needle not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "球的价格是10日元" in html and "价 (U+4EF7, simplified form; Japanese writes 価)" in html
    assert '<li class="check-fail">✗ <b>script_purity</b>' in html
    assert html.index("check-fail") < html.index("check-pass")  # failing checks come first
    assert "&lt;|im_start|&gt;" in html  # the rendered prompt, escaped


def test_memorisation_and_judge_notes(tmp_path: Path) -> None:
    path = write_run(tmp_path, "good", GOOD)
    run = read_run(path)
    # Pretend the smoke suite had a reworded twin of the bat-and-ball puzzle that the model failed.
    twin = [r for r in run.records if r.probe == "fam-grandfather"]
    for r in twin:
        object.__setattr__(r, "variant_of", "crt-bat-ball")
        object.__setattr__(
            r, "checks", [{"name": "contains", "kind": "answer", "passed": False, "evidence": "x"}]
        )
    judged = next(r for r in run.records if r.probe == "tr-thanks" and r.lang == "ja")
    judged.checks.append(
        {"name": "judge", "kind": "judge", "passed": True, "evidence": "score 5/5", "score": 5.0}
    )
    object.__setattr__(run.header, "judge", "http://localhost:8000")
    s = summarise(run)
    assert s.memorisation == [
        "crt-bat-ball 1/1 but its twin fam-grandfather 0/1 (en)",
        "crt-bat-ball 1/1 but its twin fam-grandfather 0/1 (ja)",
    ]
    assert s.judged_probes == ["tr-thanks"] and s.judged == {"ja": [5.0]}
    html = html_report([s])
    assert "judged by http://localhost:8000: tr-thanks" in html and "memorisation hint" in html


def test_an_interrupted_run_still_reports(tmp_path: Path) -> None:
    path = write_run(tmp_path, "good", GOOD)
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")  # header + 4 answers, no footer
    run = read_run(path)
    assert run.footer is None and len(run.records) == 4
    assert "unfinished" in write_report([path], tmp_path / "r.html").markdown


def test_find_runs_and_bad_files(tmp_path: Path) -> None:
    a = write_run(tmp_path, "a", GOOD)
    b = write_run(tmp_path, "b", GOOD)
    assert find_runs([], tmp_path) == [b]  # the latest
    assert find_runs(["run-a", str(b)], tmp_path) == [a, b]
    with pytest.raises(RunFileError, match="no run 'nope' \\(2 runs in"):
        find_runs(["nope"], tmp_path)
    with pytest.raises(RunFileError, match="no runs in"):
        find_runs([], tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header"}\n', encoding="utf-8")
    with pytest.raises(RunFileError, match="not a tameshi eval run"):
        read_run(bad)
    bad.write_text("not json\n", encoding="utf-8")
    with pytest.raises(RunFileError, match="line 1: not JSON"):
        read_run(bad)
