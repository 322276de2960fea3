"""The Markdown summary `tameshi report` (and the end of `tameshi eval`) prints to the terminal."""

from __future__ import annotations

from tameshi.eval.summary import FLAGS, RunSummary

LANG_NAMES = {"en": "EN", "ja": "JA"}


def _params(s: RunSummary) -> str:
    p = s.run.header.params
    if not p.get("do_sample") or p.get("temperature") == 0:
        text = "greedy"
    else:
        text = f"T {p.get('temperature')}, top_p {p.get('top_p')}, top_k {p.get('top_k')}"
    text += f", rep. penalty {p.get('repetition_penalty')}, max_new_tokens {p.get('max_new_tokens')}"
    return (f"{s.run.header.preset}: " if s.run.header.preset else "") + text


def runs_table(summaries: list[RunSummary]) -> list[str]:
    lines = ["| # | model | suite | sampling | answers | time |", "|---|---|---|---|---|---|"]
    for i, s in enumerate(summaries, 1):
        h, f = s.run.header, s.run.footer
        time = f"{f['seconds']:.0f} s, {f.get('tokens_per_second')} tok/s" if f else "unfinished"
        if f and not f.get("complete", True):
            time += " (interrupted)"
        lines.append(
            f"| {i} | {h.model} ({h.device}) | {h.suite} | {_params(s)} | {len(s.run.records)} | {time} |"
        )
    return lines


def pass_table(summaries: list[RunSummary]) -> list[str]:
    """Categories down, for each run its languages and the EN−JA gap across."""
    categories = list(dict.fromkeys(c for s in summaries for c in s.categories))
    head, rule = ["category"], ["---"]
    for i, s in enumerate(summaries, 1):
        tag = f"#{i} " if len(summaries) > 1 else ""
        head += [f"{tag}{LANG_NAMES.get(lang, lang)}" for lang in s.langs]
        rule += ["--:"] * len(s.langs)
        if len(s.langs) > 1:
            head.append(f"{tag}gap")
            rule.append("--:")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    for category in [*categories, None]:
        row = [category or "**all**"]
        for s in summaries:
            for lang in s.langs:
                cell = s.cell(category, lang) if category else s.by_lang.get(lang)
                row.append(f"{cell.pct()} ({cell.frac()})" if cell else "—")
            if len(s.langs) > 1:
                row.append(s.gap(category))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def flags_table(summaries: list[RunSummary]) -> list[str]:
    names = list(FLAGS.values())
    lines = [
        "| run | lang | correct (answer checks) | " + " | ".join(names) + " | errors |",
        "|---|---|--:|" + "--:|" * len(names) + "--:|",
    ]
    for i, s in enumerate(summaries, 1):
        for lang in s.langs:
            row = [f"#{i}", LANG_NAMES.get(lang, lang), f"{s.correct_by_lang[lang].pct()}"]
            for name in names:
                checked = s.flag_checked.get((name, lang), 0)  # Japanese purity runs on Japanese answers only
                row.append(f"{s.flags.get((name, lang), 0)}/{checked}" if checked else "—")
            row.append(str(s.errors.get(lang, 0)))
            lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown_report(summaries: list[RunSummary]) -> str:
    out = ["# tameshi eval report", "", *runs_table(summaries), ""]
    out += ["## Pass rate by category (an answer passes when every check passes)", "", *pass_table(summaries)]
    out += ["", "gap = EN − JA in percentage points.", "", "## Flags", "", *flags_table(summaries)]
    for i, s in enumerate(summaries, 1):
        if s.memorisation:
            out += ["", f"**Memorisation hints (#{i})** — famous puzzle solved, reworded twin not:"]
            out += [f"- {hint}" for hint in s.memorisation]
        if s.judged_probes:
            means = ", ".join(
                f"{LANG_NAMES.get(lang, lang)} {sum(v) / len(v):.2f}" for lang, v in s.judged.items() if v
            )
            out += [
                "",
                f"**Judged (#{i})** by {s.run.header.judge}: mean score {means}; probes: {', '.join(s.judged_probes)}",
            ]
        elif s.run.header.judge is None:
            out += ["", f"#{i}: no judge (automatic checks only)."]
    return "\n".join(out) + "\n"
