"""One self-contained HTML file: the summary tables, inline SVG plots, and every answer side by side.

No script, no stylesheet or font from elsewhere: it opens from file:// on a machine with no network.
"""

from __future__ import annotations

import re
from datetime import datetime
from html import escape

from tameshi.eval.records import Record
from tameshi.eval.report_md import LANG_NAMES, flags_table, pass_table, runs_table
from tameshi.eval.summary import RunSummary
from tameshi.eval.svg import bar_chart

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Hiragino Sans","Noto Sans CJK JP",sans-serif;
  margin:24px;color:#222;max-width:1600px}
table{border-collapse:collapse;margin:8px 0 18px}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}
th{background:#f3f3f3}
td.num{text-align:right}
table.answers td{max-width:520px}
pre{white-space:pre-wrap;word-break:break-word;max-height:320px;overflow:auto;margin:4px 0;
  background:#fafafa;padding:6px;font-size:12px}
td.pass{border-left:4px solid #3a9a4a} td.fail{border-left:4px solid #c33}
.badge{font-weight:bold;font-size:12px} .pass .badge{color:#2d7a3a} .fail .badge{color:#b22}
ul.checks{margin:2px 0;padding-left:18px;font-size:12px}
li.check-fail{color:#a11;background:#fde8e8} li.check-pass{color:#555}
.meta{color:#777;font-size:12px}
"""


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escape(text))


def md_table_to_html(lines: list[str], table_id: str) -> str:
    """The Markdown tables of report_md, as HTML: one source for both formats."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    head, body = rows[0], rows[2:]
    right = ["--:" in c for c in rows[1]]
    html = [f'<table id="{table_id}" class="{table_id}"><thead><tr>']
    html += [f"<th>{_inline(c)}</th>" for c in head]
    html.append("</tr></thead><tbody>")
    for row in body:
        cells = "".join(
            f'<td class="num">{_inline(c)}</td>' if right[i] else f"<td>{_inline(c)}</td>"
            for i, c in enumerate(row)
        )
        html.append(f"<tr>{cells}</tr>")
    html.append("</tbody></table>")
    return "".join(html)


def _plots(summaries: list[RunSummary]) -> str:
    charts = []
    for i, s in enumerate(summaries, 1):
        series = {
            LANG_NAMES.get(lang, lang): [s.cell(c, lang).rate for c in s.categories] for lang in s.langs
        }
        charts.append(bar_chart(f"#{i} {s.run.label}: pass rate by category", s.categories, series))
    if len(summaries) > 1:
        langs = list(dict.fromkeys(lang for s in summaries for lang in s.langs))
        series = {f"#{i}": [s.by_lang.get(lang).rate if s.by_lang.get(lang) else None for lang in langs]
                  for i, s in enumerate(summaries, 1)}  # fmt: skip
        charts.append(
            bar_chart("All runs: pass rate by language", [LANG_NAMES.get(x, x) for x in langs], series, 480)
        )
    return "\n".join(f"<figure>{c}</figure>" for c in charts)


def _answer_cell(records: list[Record]) -> str:
    if not records:
        return '<td class="meta">not run</td>'
    ok = all(r.passed for r in records)
    parts = [f'<td class="{"pass" if ok else "fail"}">']
    for r in records:
        status = "PASS" if r.passed else "FAIL"
        rep = f" · repeat {r.repeat + 1}" if len(records) > 1 else ""
        parts.append(
            f'<div class="badge">{status}{rep}</div>'
            f'<div class="meta">{r.completion_tokens} tokens, finish: {escape(r.finish_reason)}</div>'
            f"<pre>{escape(r.output) or '<i>(empty)</i>'}</pre><ul class='checks'>"
        )
        for c in sorted(r.checks, key=lambda c: c["passed"]):  # failures first
            cls = "check-pass" if c["passed"] else "check-fail"
            mark = "✓" if c["passed"] else "✗"
            parts.append(f'<li class="{cls}">{mark} <b>{escape(c["name"])}</b>: {escape(c["evidence"])}</li>')
        parts.append("</ul>")
    parts.append("</td>")
    return "".join(parts)


def _answers(summaries: list[RunSummary]) -> str:
    index: list[dict[tuple[str, str], list[Record]]] = []
    keys: list[tuple[str, str]] = []
    for s in summaries:
        by_key: dict[tuple[str, str], list[Record]] = {}
        for r in s.run.records:
            by_key.setdefault((r.probe, r.lang), []).append(r)
            if (r.probe, r.lang) not in keys:
                keys.append((r.probe, r.lang))
        index.append(by_key)
    head = "".join(f"<th>#{i} {escape(s.run.label)}</th>" for i, s in enumerate(summaries, 1))
    rows = [f'<table class="answers" id="answers"><thead><tr><th>probe</th>{head}</tr></thead><tbody>']
    for key in keys:
        first = next(by_key[key][0] for by_key in index if key in by_key)
        prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in first.messages)
        rows.append(
            f'<tr id="{escape(key[0])}-{key[1]}"><td><b>{escape(key[0])}</b><br>'
            f'<span class="meta">{escape(first.category)} · {LANG_NAMES.get(key[1], key[1])}'
            f"{' → ' + first.expect_lang.upper() if first.expect_lang != key[1] else ''}</span>"
            f"<details><summary>prompt</summary><pre>{escape(prompt)}</pre>"
            f"<details><summary>rendered</summary><pre>{escape(first.prompt)}</pre></details></details></td>"
        )
        rows += [_answer_cell(by_key.get(key, [])) for by_key in index]
        rows.append("</tr>")
    rows.append("</tbody></table>")
    return "".join(rows)


def html_report(summaries: list[RunSummary]) -> str:
    notes = []
    for i, s in enumerate(summaries, 1):
        notes += [f"<li>#{i} memorisation hint: {escape(h)}</li>" for h in s.memorisation]
        if s.judged_probes:
            notes.append(
                f"<li>#{i} judged by {escape(str(s.run.header.judge))}: {escape(', '.join(s.judged_probes))}</li>"
            )
        else:
            notes.append(f"<li>#{i}: no judge; automatic checks only.</li>")
    body = [
        "<h1>tameshi eval report</h1>",
        f'<p class="meta">written {datetime.now().astimezone():%Y-%m-%d %H:%M %z}</p>',
        "<h2>Runs</h2>",
        md_table_to_html(runs_table(summaries), "runs"),
        "<h2>Pass rate by category × language</h2>",
        "<p class='meta'>An answer passes when every check passes: the probe's own checks and the hygiene "
        "checks (not cut off, no loop, right language, no Chinese forms in Japanese). gap = EN − JA, points.</p>",
        md_table_to_html(pass_table(summaries), "summary"),
        _plots(summaries),
        "<h2>Flags</h2>",
        md_table_to_html(flags_table(summaries), "flags"),
        f"<ul>{''.join(notes)}</ul>",
        "<h2>Answers side by side</h2>",
        "<p class='meta'>Failing checks first, in red, with their evidence.</p>",
        _answers(summaries),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tameshi eval report</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
