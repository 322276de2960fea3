"""Run files: one JSONL per `tameshi eval` run — a header line, one line per answer, a footer line.

Lines are written as answers complete, so an interrupted run still reads (with no footer). Every
record carries everything a report needs: the rendered prompt, the output, the finish reason, and each
check's verdict and evidence; nothing is recomputed when reporting.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tameshi.errors import RunFileError

FORMAT = "tameshi-eval-run/1"


@dataclass(frozen=True)
class RunHeader:
    run_id: str
    model: str  # a short label: folder or file name
    model_path: str
    params: dict[str, Any]  # the resolved SamplingParams
    preset: str | None
    suite: str
    suite_path: str
    suite_sha256: str
    langs: list[str]
    repeat: int
    tameshi_version: str
    started: str  # ISO 8601, local time with offset
    device: str
    judge: str | None = None  # "http://…" or "local:MODEL"; None: no probe was judged
    probes: list[str] = field(default_factory=list)  # ids in suite order; answers are written by batch
    format: str = FORMAT


@dataclass(frozen=True)
class Record:
    probe: str
    category: str
    lang: str
    expect_lang: str
    repeat: int
    tags: list[str]
    variant_of: str | None
    messages: list[dict[str, str]]
    prompt: str  # the rendered chat prompt, special tokens shown
    output: str
    finish_reason: str
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    max_new_tokens: int
    batch_seconds: float  # wall time of the batch this answer was generated in
    batch_size: int
    checks: list[dict[str, Any]]  # Verdict.to_json() for every check, hygiene and judge included
    passed: bool  # every check passed

    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"]]


@dataclass
class Run:
    path: Path
    header: RunHeader
    records: list[Record] = field(default_factory=list)
    footer: dict[str, Any] | None = None  # None: the run did not finish

    @property
    def label(self) -> str:
        """ "model · sampling · suite HH:MM", enough to tell runs apart in a side-by-side table."""
        h, p = self.header, self.header.params
        sampling = h.preset or (
            "greedy" if not p.get("do_sample") or p.get("temperature") == 0 else f"T {p.get('temperature')}"
        )
        return f"{h.model} · {sampling} · {h.suite} {h.started[11:16]}"


def _line(kind: str, obj: Any) -> str:
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    return json.dumps({"type": kind, **data}, ensure_ascii=False) + "\n"


class RunWriter:
    """Appends lines and flushes each, so a crash or Ctrl-C keeps what was done."""

    def __init__(self, path: Path, header: RunHeader) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f: IO[str] = open(path, "x", encoding="utf-8")  # noqa: SIM115 — closed in close()
        self._write(_line("header", header))

    def _write(self, text: str) -> None:
        self._f.write(text)
        self._f.flush()

    def record(self, record: Record) -> None:
        self._write(_line("record", record))

    def close(self, footer: dict[str, Any] | None = None) -> None:
        if footer is not None:
            self._write(_line("footer", footer))
        self._f.close()


def read_run(path: str | Path) -> Run:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RunFileError(f"cannot read run file {path}: {e.strerror or e}") from None
    try:
        items = [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path} line {e.lineno}: not JSON; is it a tameshi eval run?") from None
    if not items or items[0].get("type") != "header" or items[0].get("format") != FORMAT:
        raise RunFileError(f"{path} is not a tameshi eval run (no '{FORMAT}' header)")
    try:
        header = RunHeader(**{k: v for k, v in items[0].items() if k != "type"})
        records = [
            Record(**{k: v for k, v in i.items() if k != "type"}) for i in items if i["type"] == "record"
        ]
    except TypeError as e:
        raise RunFileError(f"{path}: a line has unexpected fields ({e})") from None
    footer = next((i for i in items if i["type"] == "footer"), None)
    # Batches group answers by token cap, so the file is in batch order; reports read in suite order.
    order = {probe: i for i, probe in enumerate(header.probes)}
    langs = {lang: i for i, lang in enumerate(header.langs)}
    records.sort(key=lambda r: (order.get(r.probe, len(order)), langs.get(r.lang, len(langs)), r.repeat))
    return Run(path, header, records, footer)


def find_runs(names: list[str], runs_dir: Path) -> list[Path]:
    """Paths for run arguments: a file, a run id in `runs_dir`, or "latest"; no names → the latest."""
    existing = sorted(runs_dir.glob("*.jsonl")) if runs_dir.is_dir() else []
    if not names:
        names = ["latest"]
    found = []
    for name in names:
        path = Path(name)
        if path.is_file():
            found.append(path)
        elif name == "latest" and existing:
            found.append(existing[-1])
        elif (runs_dir / f"{name}.jsonl").is_file():
            found.append(runs_dir / f"{name}.jsonl")
        else:
            hint = f"{len(existing)} runs in {runs_dir}" if existing else f"no runs in {runs_dir}"
            raise RunFileError(f"no run {name!r} ({hint}); give a .jsonl path or a run id")
    return found
