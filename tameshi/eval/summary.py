"""From a run's records to the numbers a report shows: pass rates per category × language, flags,
memorisation hints and judge scores. Both report formats read only this."""

from __future__ import annotations

from dataclasses import dataclass, field

from tameshi.eval.records import Record, Run

# hygiene check → the flag it raises in reports
FLAGS = {
    "truncation": "truncated",
    "repetition": "repetition",
    "language": "wrong language",
    "script_purity": "Chinese in Japanese",
}


@dataclass
class Cell:
    passed: int = 0
    total: int = 0

    def add(self, ok: bool) -> None:
        self.passed += ok
        self.total += 1

    @property
    def rate(self) -> float | None:
        return self.passed / self.total if self.total else None

    def pct(self) -> str:
        return "—" if self.rate is None else f"{100 * self.rate:.0f}%"

    def frac(self) -> str:
        return "—" if not self.total else f"{self.passed}/{self.total}"


def answer_ok(record: Record) -> bool:
    """The probe's own checks (is it right?), ignoring hygiene and the judge."""
    return all(c["passed"] for c in record.checks if c.get("kind", "answer") == "answer")


@dataclass
class RunSummary:
    run: Run
    langs: list[str]
    categories: list[str]
    strict: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (category, lang) → all checks
    correct: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (category, lang) → answer checks
    by_lang: dict[str, Cell] = field(default_factory=dict)
    correct_by_lang: dict[str, Cell] = field(default_factory=dict)
    flags: dict[tuple[str, str], int] = field(default_factory=dict)  # (flag, lang) → answers flagged
    flag_checked: dict[tuple[str, str], int] = field(default_factory=dict)  # (flag, lang) → answers checked
    errors: dict[str, int] = field(default_factory=dict)
    memorisation: list[str] = field(default_factory=list)
    judged: dict[str, list[float]] = field(default_factory=dict)  # lang → scores
    judged_probes: list[str] = field(default_factory=list)

    def cell(self, category: str, lang: str) -> Cell:
        return self.strict.get((category, lang), Cell())

    def gap(self, category: str | None = None) -> str:
        """EN minus JA pass rate, in percentage points; "—" unless both languages ran."""
        if "en" not in self.langs or "ja" not in self.langs:
            return "—"
        en, ja = (
            (self.cell(category, "en"), self.cell(category, "ja"))
            if category
            else (self.by_lang.get("en", Cell()), self.by_lang.get("ja", Cell()))
        )
        if en.rate is None or ja.rate is None:
            return "—"
        return f"{100 * (en.rate - ja.rate):+.0f}"


def summarise(run: Run) -> RunSummary:
    langs = [lang for lang in run.header.langs if any(r.lang == lang for r in run.records)]
    categories = list(dict.fromkeys(r.category for r in run.records))
    s = RunSummary(run, langs, categories)
    for r in run.records:
        s.strict.setdefault((r.category, r.lang), Cell()).add(r.passed)
        s.correct.setdefault((r.category, r.lang), Cell()).add(answer_ok(r))
        s.by_lang.setdefault(r.lang, Cell()).add(r.passed)
        s.correct_by_lang.setdefault(r.lang, Cell()).add(answer_ok(r))
        for c in r.checks:
            if c["name"] in FLAGS:
                key = (FLAGS[c["name"]], r.lang)
                s.flag_checked[key] = s.flag_checked.get(key, 0) + 1
                s.flags[key] = s.flags.get(key, 0) + (not c["passed"])
            if c["name"] == "judge" and c.get("score") is not None:
                s.judged.setdefault(r.lang, []).append(float(c["score"]))
                if r.probe not in s.judged_probes:
                    s.judged_probes.append(r.probe)
        if r.finish_reason == "error":
            s.errors[r.lang] = s.errors.get(r.lang, 0) + 1
    s.memorisation = _memorisation(run.records)
    return s


def _memorisation(records: list[Record]) -> list[str]:
    """A famous puzzle solved more often than its reworded twin: the model may know the answer by heart."""
    rate: dict[tuple[str, str], Cell] = {}
    twins: dict[str, str] = {}
    for r in records:
        rate.setdefault((r.probe, r.lang), Cell()).add(answer_ok(r))
        if r.variant_of:
            twins[r.probe] = r.variant_of
    hints = []
    for variant, famous in twins.items():
        for lang in ("en", "ja"):
            f, v = rate.get((famous, lang)), rate.get((variant, lang))
            if f and v and f.rate is not None and v.rate is not None and f.rate > v.rate:
                hints.append(f"{famous} {f.frac()} but its twin {variant} {v.frac()} ({lang})")
    return hints
