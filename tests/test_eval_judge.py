"""The optional judge (eval/judge.py): ELYZA-style rubric prompts in the question's language, scores read
from the reply, and an OpenAI-compatible endpoint spoken to over HTTP (a local stand-in server here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tameshi.errors import JudgeError
from tameshi.eval.judge import HttpJudge, JudgeRequest, judge_prompt, make_judge, parse_score, score


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("4", 4),
        ("Score: 5", 5),
        ("**3**", 3),
        ("４点", 4),
        ("評価: 2点です", 2),
        ("1.5", None),
        ("none", None),
    ],
)
def test_judge_score_parsing(reply: str, value: int | None) -> None:
    assert parse_score(reply) == value


class FakeJudge:
    name = "fake"

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.prompts = replies, []

    def complete(self, prompts: list[str]) -> list[str]:
        self.prompts += prompts
        return self.replies[: len(prompts)]


def test_judge_prompts_carry_the_rubric_in_the_question_language() -> None:
    reqs = [
        JudgeRequest("Why is the sky blue?", "Scattering.", "Mentions scattering.", "", "en"),
        JudgeRequest("空はなぜ青い？", "散乱のため。", "散乱に触れているか。", "レイリー散乱。", "ja"),
    ]
    judge = FakeJudge(["5", "I cannot score this"])
    first, second = score(judge, reqs)
    assert first.passed and first.score == 5 and first.kind == "judge"
    assert not second.passed and second.score is None and "no 1–5 score" in second.evidence
    assert "Output only the score" in judge.prompts[0] and "Mentions scattering." in judge.prompts[0]
    assert "1〜5" in judge.prompts[1] and "参考となる回答例: レイリー散乱。" in judge.prompts[1]
    assert judge_prompt(reqs[1]).count("散乱のため。") == 1


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[dict]]]:
    """A stand-in /v1/chat/completions: answers "Score: 4", or HTTP 400 when the prompt says "break"."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if "break" in body["messages"][0]["content"]:
                self.send_response(400, "Bad Request")
                self.end_headers()
                return
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Score: 4"}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


def test_http_judge_speaks_openai_chat_completions(endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = endpoint
    monkeypatch.setenv("TAMESHI_JUDGE_API_KEY", "sk-test")
    judge = make_judge(url + "/v1", "judge-model")
    req = JudgeRequest("空はなぜ青い？", "散乱のため。", "散乱に触れているか。", "", "ja")
    [verdict] = score(judge, [req])
    assert verdict.passed and verdict.score == 4 and "judge-model" in verdict.evidence
    [call] = seen
    assert call["path"] == "/v1/chat/completions" and call["auth"] == "Bearer sk-test"
    assert call["body"]["model"] == "judge-model" and call["body"]["temperature"] == 0
    assert "散乱のため。" in call["body"]["messages"][0]["content"]


def test_http_judge_failures_are_one_clear_error(endpoint) -> None:
    url, _ = endpoint
    with pytest.raises(JudgeError, match="HTTP 400"):
        HttpJudge(url).complete(["please break"])
    with pytest.raises(JudgeError, match="takes an http"):
        make_judge("ftp://nowhere")
