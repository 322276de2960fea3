"""`tameshi report`: run files in, a Markdown summary and one self-contained HTML file out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tameshi.eval.records import read_run
from tameshi.eval.report_html import html_report
from tameshi.eval.report_md import markdown_report
from tameshi.eval.summary import RunSummary, summarise


@dataclass(frozen=True)
class Report:
    summaries: list[RunSummary]
    markdown: str
    html_path: Path


def write_report(run_paths: list[Path], html_path: Path) -> Report:
    summaries = [summarise(read_run(p)) for p in run_paths]
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(html_report(summaries), encoding="utf-8")
    return Report(summaries, markdown_report(summaries), html_path)
