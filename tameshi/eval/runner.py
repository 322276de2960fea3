"""Run a suite on a model: every (probe, language, repeat) through the engine in batches, checked, saved.

Prompts with the same token cap go to the engine together (`LLM.generate` with a list), so continuous
batching runs them side by side; the progress bar moves per batch. Each batch's records are written
as soon as it is checked, so an interrupted run keeps what it did.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import tameshi
from tameshi.errors import SuiteError
from tameshi.eval.checks import Answer, Verdict, hygiene_checks, run_check
from tameshi.eval.judge import Judge, JudgeRequest, score
from tameshi.eval.records import Record, RunHeader, RunWriter
from tameshi.eval.suite import LANGS, Probe, Suite
from tameshi.loading.default import DEFAULT_MODEL_NAME
from tameshi.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tameshi.api import LLM


@dataclass(frozen=True)
class EvalConfig:
    langs: tuple[str, ...] = LANGS
    repeat: int = 1
    batch_size: int = 32  # prompts handed to the engine at once
    only: tuple[str, ...] = ()  # probe ids or categories to keep; empty: all
    preset: str | None = None  # recorded in the header; the params already include it


@dataclass(frozen=True)
class Job:
    probe: Probe
    lang: str
    repeat: int
    max_new_tokens: int


def plan(suite: Suite, params: SamplingParams, config: EvalConfig) -> list[Job]:
    """The (probe, language, repeat) list; a probe's cap applies only below the run's own."""
    cap = params.max_new_tokens or 512
    jobs = []
    for probe in suite.probes:
        if config.only and probe.id not in config.only and probe.category not in config.only:
            continue
        for lang in config.langs:
            if lang in probe.langs:
                n = min(probe.max_new_tokens or cap, cap)
                jobs.extend(Job(probe, lang, r, n) for r in range(config.repeat))
    if not jobs:  # an empty run would save and report nothing, and look like a pass
        raise SuiteError(_nothing_to_run(suite, config))
    return jobs


def _nothing_to_run(suite: Suite, config: EvalConfig) -> str:
    names = {p.id for p in suite.probes} | set(suite.categories())
    unknown = [name for name in config.only if name not in names]
    if unknown:
        return (
            f"no probe or category {', '.join(map(repr, unknown))} in suite {suite.name!r}; "
            f"its categories: {', '.join(suite.categories())}"
        )
    kept = [p for p in suite.probes if not config.only or p.id in config.only or p.category in config.only]
    langs = sorted({lang for p in kept for lang in p.langs})
    return f"no probe of suite {suite.name!r} selected here is in {'/'.join(config.langs)} (they are in {'/'.join(langs)})"


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Groups sharing a token cap and a repeat index (each repeat gets its own seed), at most `size`."""
    groups: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.max_new_tokens, job.repeat), []).append(job)
    return [group[i : i + size] for _, group in sorted(groups.items()) for i in range(0, len(group), size)]


def check_answer(probe: Probe, lang: str, answer: Answer) -> list[Verdict]:
    verdicts = [run_check(spec.type, answer, spec.args[lang]) for spec in probe.checks if lang in spec.args]
    return verdicts + hygiene_checks(answer)


def model_label(model: str | None) -> str:
    """A short name for reports from what the user typed: a path's last part, a hub id as is; no model
    is the embedded default, named (its cache folder's name carries a hash)."""
    if model is None:
        return DEFAULT_MODEL_NAME
    path = Path(model)
    return path.name if path.exists() else model


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


def run_eval(
    llm: LLM,
    suite: Suite,
    params: SamplingParams,
    config: EvalConfig,
    runs_dir: Path,
    judge: Judge | None = None,
    judge_spec: str | None = None,
    label: str | None = None,
    on_batch: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Run `suite` on `llm`; returns the run file. `on_batch(done, total, what)` reports progress."""
    resolved = llm.sampling_params(params)
    jobs = plan(suite, resolved, config)
    source = llm.loaded.source
    started = datetime.now().astimezone()
    label = label or source.path.name
    run_id = f"{started:%Y%m%d-%H%M%S}-{_slug(label)}-{_slug(suite.name)}"
    header = RunHeader(
        run_id=run_id,
        model=label,
        model_path=f"{source.path} ({source.origin})",
        params=dataclasses.asdict(resolved),
        preset=config.preset,
        suite=suite.name,
        suite_path=suite.path,
        suite_sha256=suite.sha256,
        langs=list(config.langs),
        repeat=config.repeat,
        tameshi_version=tameshi.__version__,
        started=started.isoformat(timespec="seconds"),
        device=f"{llm.loaded.device} / {str(llm.loaded.dtype).removeprefix('torch.')}",
        judge=judge_spec if judge else None,
        probes=list(dict.fromkeys(job.probe.id for job in jobs)),
    )
    writer = RunWriter(runs_dir / f"{run_id}.jsonl", header)
    t0, tokens, done = time.perf_counter(), 0, 0
    try:
        for group in batches(jobs, config.batch_size):
            if on_batch:
                on_batch(done, len(jobs), f"{group[0].probe.category} ({len(group)} prompts)")
            records = _run_batch(llm, resolved, group, judge)
            for record in records:
                writer.record(record)
                tokens += record.completion_tokens
            done += len(group)
        if on_batch:
            on_batch(done, len(jobs), "done")
    finally:
        seconds = time.perf_counter() - t0
        footer = {
            "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
            "complete": done == len(jobs),
            "answers": done,
            "seconds": round(seconds, 2),
            "completion_tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
        }
        writer.close(footer)
    return writer.path


def _run_batch(llm: LLM, params: SamplingParams, group: list[Job], judge: Judge | None) -> list[Record]:
    job0 = group[0]
    seed = None if params.seed is None else params.seed + job0.repeat  # repeats must differ when seeded
    batch_params = dataclasses.replace(params, max_new_tokens=job0.max_new_tokens, seed=seed)
    messages = [job.probe.messages(job.lang) for job in group]
    ids = [llm.encode_chat(m) for m in messages]
    t = time.perf_counter()
    completions = llm.generate(ids, batch_params)
    seconds = time.perf_counter() - t
    answers, verdicts = [], []
    for job, c in zip(group, completions, strict=True):
        answer = Answer(
            text=c.text.strip(),
            lang=job.lang,
            expect_lang=job.probe.expect_lang(job.lang),
            finish_reason=c.finish_reason,
            completion_tokens=c.completion_tokens,
            max_new_tokens=job.max_new_tokens,
            error=c.error,
            question=job.probe.prompt[job.lang],
        )
        answers.append(answer)
        verdicts.append(check_answer(job.probe, job.lang, answer))
    if judge is not None:
        judged = [i for i, job in enumerate(group) if job.probe.judge is not None]
        requests = [_judge_request(group[i], answers[i].text) for i in judged]
        for i, v in zip(judged, score(judge, requests) if requests else [], strict=True):
            verdicts[i].append(v)
    return [
        Record(
            probe=job.probe.id,
            category=job.probe.category,
            lang=job.lang,
            expect_lang=answer.expect_lang,
            repeat=job.repeat,
            tags=list(job.probe.tags),
            variant_of=job.probe.variant_of,
            messages=msgs,
            prompt=llm.tokenizer.decode(prompt_ids, skip_special_tokens=False),
            output=answer.text,
            finish_reason=answer.finish_reason,
            error=answer.error,
            prompt_tokens=len(prompt_ids),
            completion_tokens=answer.completion_tokens,
            max_new_tokens=job.max_new_tokens,
            batch_seconds=round(seconds, 3),
            batch_size=len(group),
            checks=[v.to_json() for v in vs],
            passed=all(v.passed for v in vs),
        )
        for job, msgs, prompt_ids, answer, vs in zip(group, messages, ids, answers, verdicts, strict=True)
    ]


def _judge_request(job: Job, answer: str) -> JudgeRequest:
    j = job.probe.judge
    assert j is not None
    return JudgeRequest(
        question=job.probe.prompt[job.lang],
        answer=answer,
        aspect=j.aspect.get(job.lang, ""),
        reference=j.reference.get(job.lang, ""),
        lang=job.lang,
    )
