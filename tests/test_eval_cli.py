"""`tameshi eval` and `tameshi report` end to end on the embedded default (project check 2): every record
carries every check's verdict, the report renders, and headless Chromium finds the table and a plot."""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tameshi.cli import main
from tameshi.eval.records import read_run
from tameshi.eval.suite import load_suite

HYGIENE = ["truncation", "repetition", "language"]


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("eval") / "runs"
    # -n 24 lowers every probe's cap to one value, so the 12 prompts run as one batch: seconds on a CPU.
    assert main(["eval", "--suite", "smoke", "--runs-dir", str(runs), "-n", "24", "--greedy"]) == 0
    [path] = runs.glob("*.jsonl")
    return path


def test_every_record_has_every_checks_verdict(run_file: Path) -> None:
    run = read_run(run_file)
    probes = {p.id: p for p in load_suite("smoke").probes}
    assert run.footer and run.footer["complete"] and run.footer["answers"] == 12
    assert run.header.model == "SmolLM2-135M-Instruct" and run.header.params["max_new_tokens"] == 24
    assert {(r.probe, r.lang) for r in run.records} == {(p, lang) for p in probes for lang in ("en", "ja")}
    for r in run.records:
        probe = probes[r.probe]
        want = [s.type for s in probe.checks if r.lang in s.args] + HYGIENE
        want += ["script_purity"] if probe.expect_lang(r.lang) == "ja" else []
        assert [c["name"] for c in r.checks] == want, r.probe
        assert all(isinstance(c["passed"], bool) and c["evidence"] for c in r.checks)
        assert r.passed == all(c["passed"] for c in r.checks)
        assert r.prompt.startswith("<|im_start|>") and r.finish_reason in ("stop", "length")
        assert r.batch_size == 12 and r.completion_tokens <= 24


def test_report_command_prints_markdown_and_writes_html(run_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(run_file), "-o", str(out), "--plain"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "| category | EN | JA | gap |" in stdout and "| **all** |" in stdout and f"report: {out}" in stderr
    page = out.read_text(encoding="utf-8")
    assert '<table id="summary"' in page and "<svg" in page and "SmolLM2-135M-Instruct" in page


def test_cli_refuses_bad_options_before_loading_a_model(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--suite", "nonesuch", "--runs-dir", str(tmp_path)]) == 1
    assert "no suite named 'nonesuch'" in capsys.readouterr().err
    assert main(["eval", "--lang", "fr", "--runs-dir", str(tmp_path)]) == 2
    assert main(["report", "--runs-dir", str(tmp_path / "none")]) == 1
    assert "no runs in" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.jsonl"))


def _chromium() -> str | None:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium before the tests")
        pytest.skip("chromium is not installed (CI installs it; here the browser check is skipped)")
    return found


# Appended to a copy of the report: the browser measures what it laid out and leaves it in the DOM.
PROBE = """<script>
const table = document.querySelector("table#summary");
const chart = document.querySelector("svg.chart");
const bars = chart ? [...chart.querySelectorAll("rect")].filter(r => r.querySelector("title")) : [];
document.body.dataset.probe = JSON.stringify({
  rows: table ? table.rows.length : 0,
  header: table ? [...table.rows[0].cells].map(c => c.textContent) : [],
  tableHeight: table ? table.getBoundingClientRect().height : 0,
  charts: document.querySelectorAll("svg.chart").length,
  chartWidth: chart ? chart.getBoundingClientRect().width : 0,
  bars: bars.length,
  barsDrawn: bars.filter(r => r.getBBox().width > 0).length,
});
</script>"""


def test_report_opens_in_headless_chromium(run_file: Path, tmp_path: Path) -> None:
    browser = _chromium()
    out = tmp_path / "report.html"
    assert main(["report", str(run_file), "-o", str(out), "--plain"]) == 0
    page = tmp_path / "probe.html"
    page.write_text(out.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]  # fmt: skip
    dom = subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m, f"Chromium rendered no page: {dom[:300]!r}"
    seen = json.loads(html_lib.unescape(m.group(1)))
    categories = len(load_suite("smoke").categories())
    assert seen["rows"] == 1 + categories + 1  # header, one row per category, "all"
    assert seen["header"] == ["category", "EN", "JA", "gap"] and seen["tableHeight"] > 0
    assert seen["charts"] >= 1 and seen["chartWidth"] > 100
    assert seen["bars"] == seen["barsDrawn"] == 2 * categories  # a bar per category and language


def test_in_ci_a_missing_chromium_fails_rather_than_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        _chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _chromium()
