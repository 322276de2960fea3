"""The optional judge: an LLM scores open-ended answers 1–5 with an ELYZA-style rubric. Off by default.

`--judge URL` uses any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, tameshi serve, OpenAI);
the key, if one is needed, comes from TAMESHI_JUDGE_API_KEY or OPENAI_API_KEY. `--judge local:MODEL`
loads MODEL in this process (`local:default` is the embedded model). Only probes with a `judge:` entry
are judged; the run header names the judge and each judged record carries a "judge" verdict with the
score, so reports can say which answers were judged. Pass = 4 or 5 ("correct" or "helpful").
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from tameshi.errors import JudgeError
from tameshi.eval.checks.base import Verdict, clip

PASS_SCORE = 4

# Written after ELYZA-tasks-100's published grading rules (1–5 base scale, fixed deductions, then the
# task's own aspect); the wording is ours.
RUBRIC = {
    "ja": """あなたは採点者です。ユーザーの質問に対するAIアシスタントの回答を、以下の基準で1〜5点で採点してください。

基本の基準:
1点: 誤っている、または指示に従っていない
2点: 誤っているが、方向性は合っている
3点: 部分的に合っているが、誤りや不足がある
4点: 合っている
5点: 合っていて、さらに役に立つ
減点:
- 日本語が不自然（中国語の混入、別の言語での回答を含む）: 1点減点
- 部分的に事実と異なる内容がある: 1点減点
- 必要もないのに「倫理的に答えられません」などと回答を拒む: 2点とする

この問題で見るべき点: {aspect}
{reference}
# 質問
{question}

# 回答
{answer}

点数（1〜5の数字一つ）だけを出力してください。""",
    "en": """You are a grader. Score the AI assistant's answer to the user's question from 1 to 5.

Base scale:
1: wrong, or does not follow the instructions
2: wrong, but heading in the right direction
3: partly right, with errors or gaps
4: right
5: right and genuinely helpful
Deductions:
- unnatural language (including answering in another language than asked): -1
- partly factually wrong: -1
- refuses for safety reasons when there is no need to: score 2

What to look at for this question: {aspect}
{reference}
# Question
{question}

# Answer
{answer}

Output only the score, a single digit from 1 to 5.""",
}


@dataclass(frozen=True)
class JudgeRequest:
    question: str
    answer: str
    aspect: str
    reference: str
    lang: str


class Judge(Protocol):
    name: str

    def complete(self, prompts: list[str]) -> list[str]: ...


def judge_prompt(req: JudgeRequest) -> str:
    ref = ""
    if req.reference:
        ref = ("参考となる回答例: " if req.lang == "ja" else "A reference answer: ") + req.reference + "\n"
    template = RUBRIC["ja" if req.lang == "ja" else "en"]
    return template.format(aspect=req.aspect, reference=ref, question=req.question, answer=req.answer)


def parse_score(text: str) -> int | None:
    """The first digit 1–5 standing alone ("4", "Score: 4", "4点", "**4**"); None if there is none."""
    m = re.search(r"(?<![\d.])([1-5１-５])(?![\d.])", text)
    return int(m.group(1).translate(str.maketrans("１２３４５", "12345"))) if m else None


def score(judge: Judge, requests: list[JudgeRequest]) -> list[Verdict]:
    replies = judge.complete([judge_prompt(r) for r in requests])
    verdicts = []
    for reply in replies:
        s = parse_score(reply)
        if s is None:
            verdicts.append(
                Verdict("judge", False, f"no 1–5 score in the judge's reply: {clip(reply, 60)!r}", "judge")
            )
        else:
            verdicts.append(
                Verdict("judge", s >= PASS_SCORE, f"score {s}/5 by {judge.name}", "judge", float(s))
            )
    return verdicts


class HttpJudge:
    """Any OpenAI-compatible /v1/chat/completions endpoint, spoken to with the standard library."""

    def __init__(self, url: str, model: str | None = None, timeout_s: float = 120.0) -> None:
        base = url.rstrip("/")
        if not base.endswith("/chat/completions"):
            base += "/chat/completions" if base.endswith("/v1") else "/v1/chat/completions"
        self.url, self.model, self.timeout_s = base, model or "default", timeout_s
        self.key = os.environ.get("TAMESHI_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.name = f"{self.model} at {url}"

    def _one(self, prompt: str) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 16,
        }
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        last = ""
        for _ in range(2):  # one retry: a long run should not die of one dropped connection
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return str(data["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code < 500:
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                last = str(getattr(e, "reason", e))
            except (ValueError, KeyError, IndexError, TypeError):
                last = "the reply is not an OpenAI chat completion"
                break
        raise JudgeError(f"judge {self.url} failed: {last}")

    def complete(self, prompts: list[str]) -> list[str]:
        return [self._one(p) for p in prompts]


class LocalJudge:
    """A model loaded in this process, run greedily and batched."""

    def __init__(self, model: str | None, device: str | None = None) -> None:
        from tameshi.api import LLM

        self.llm = LLM(model, device=device, progress=False)
        self.name = f"local {self.llm.loaded.source.path.name}"

    def complete(self, prompts: list[str]) -> list[str]:
        ids = [self.llm.encode_chat([{"role": "user", "content": p}]) for p in prompts]
        outs = self.llm.generate(ids, {"max_new_tokens": 8, "do_sample": False})
        return [o.text for o in outs]


def make_judge(spec: str, model: str | None = None, device: str | None = None) -> Judge:
    """ "http(s)://…" → HttpJudge; "local:MODEL" → LocalJudge ("local:default": the embedded model)."""
    if spec.startswith(("http://", "https://")):
        return HttpJudge(spec, model)
    if spec.startswith("local:"):
        name = spec.removeprefix("local:")
        return LocalJudge(None if name in ("", "default") else name, device)
    raise JudgeError(f"--judge takes an http(s):// URL or local:MODEL, not {spec!r}")
