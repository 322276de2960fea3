"""The eval runner without a model: a stand-in LLM answers, so batching, seeds, token caps, the judge's
place in the records and an interrupted run's file are checked in milliseconds (eval/runner.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tameshi.api import Completion
from tameshi.eval.records import read_run
from tameshi.eval.runner import EvalConfig, run_eval
from tameshi.eval.suite import load_suite
from tameshi.eval.summary import summarise
from tameshi.loading.hub import ModelSource
from tameshi.sampling_params import SamplingParams


class FakeLLM:
    """What run_eval uses of `LLM`: sampling_params, encode_chat, generate, tokenizer.decode, loaded."""

    def __init__(self, reply: Callable[[str], str], fail_on_call: int | None = None) -> None:
        self.reply, self.fail_on_call = reply, fail_on_call
        self.prompts: list[str] = []
        self.calls: list[tuple[int, SamplingParams]] = []
        self.tokenizer = SimpleNamespace(
            decode=lambda ids, skip_special_tokens: f"<user>{self.prompts[ids[0]]}"
        )
        self.loaded = SimpleNamespace(
            source=ModelSource(Path("/models/fake-7b"), "hf-folder", "test"),
            device="cpu",
            dtype=torch.float32,
        )

    def sampling_params(self, params: SamplingParams) -> SamplingParams:
        return params.resolve({"max_new_tokens": 300})

    def encode_chat(self, messages: list[dict]) -> list[int]:
        self.prompts.append(messages[-1]["content"])
        return [len(self.prompts) - 1]

    def generate(self, ids: list[list[int]], params: SamplingParams) -> list[Completion]:
        self.calls.append((len(ids), params))
        if self.fail_on_call == len(self.calls):
            raise KeyboardInterrupt
        return [Completion(self.reply(self.prompts[i[0]]), [1, 2, 3], "stop", 1) for i in ids]


class FakeJudge:
    name = "fake judge"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def complete(self, prompts: list[str]) -> list[str]:
        self.prompts += prompts
        return ["4"] * len(prompts)


def test_batches_seeds_caps_and_records(tmp_path: Path) -> None:
    llm = FakeLLM(lambda prompt: "391" if "17 × 23" in prompt else "I am not sure.")
    config = EvalConfig(langs=("en", "ja"), repeat=2, batch_size=3)
    path = run_eval(llm, load_suite("smoke"), SamplingParams(seed=7, do_sample=True), config, tmp_path)
    run = read_run(path)
    assert run.footer and run.footer["complete"] and run.footer["answers"] == 6 * 2 * 2
    assert run.header.model == "fake-7b" and run.header.params["seed"] == 7 and run.header.repeat == 2
    assert all(n <= 3 for n, _ in llm.calls) and sum(n for n, _ in llm.calls) == 24
    assert {p.seed for _, p in llm.calls} == {7, 8}  # each repeat its own seed
    # a probe's cap (arith-multiply: 256) applies; one above the run's cap (code: 512) is lowered to 300
    caps = {r.probe: r.max_new_tokens for r in run.records}
    assert caps["arith-multiply"] == 256 and caps["code-palindrome"] == 300
    arith = [r for r in run.records if r.probe == "arith-multiply"]
    assert len(arith) == 4 and all(r.checks[0]["name"] == "number" and r.checks[0]["passed"] for r in arith)
    assert arith[0].prompt.startswith("<user>") and arith[0].messages[-1]["role"] == "user"
    # written batch by batch (grouped by token cap), read back in suite order
    suite_order = [p.id for p in load_suite("smoke").probes]
    assert [r.probe for r in run.records][::4] == suite_order and run.header.probes == suite_order
    assert [r.lang for r in run.records][:4] == ["en", "en", "ja", "ja"]
    written = [line for line in path.read_text(encoding="utf-8").splitlines() if '"type": "record"' in line]
    assert [r.probe for r in run.records] != [line.split('"probe": "')[1].split('"')[0] for line in written]


def test_only_judged_probes_get_a_judge_verdict(tmp_path: Path) -> None:
    llm, judge = FakeLLM(lambda prompt: "Hello! I'm Hana, your Kyoto guide."), FakeJudge()
    config = EvalConfig(langs=("en",), only=("persona", "arith-multiply"))
    path = run_eval(llm, load_suite("default"), SamplingParams(), config, tmp_path, judge, "http://judge/v1")
    run = read_run(path)
    judged = {r.probe for r in run.records if any(c["name"] == "judge" for c in r.checks)}
    assert judged == {r.probe for r in run.records if r.category == "persona"}
    assert len(judge.prompts) == len(judged) and "Hana" in judge.prompts[0]
    assert run.header.judge == "http://judge/v1"
    s = summarise(run)
    assert sorted(s.judged_probes) == sorted(judged) and s.judged == {"en": [4.0] * len(judged)}


def test_an_interrupted_run_keeps_what_it_did(tmp_path: Path) -> None:
    llm = FakeLLM(lambda prompt: "fine", fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(llm, load_suite("smoke"), SamplingParams(), EvalConfig(batch_size=2), tmp_path)
    [path] = tmp_path.glob("*.jsonl")
    run = read_run(path)
    assert len(run.records) == 2 and run.footer and run.footer["complete"] is False
