"""Check 3, schema-driven fuzz: hypothesis builds request bodies for both endpoints from OpenAI's fields.

Valid bodies (every value in range, every combination consistent) must get a 200 of the right shape,
streamed or not. Mutated bodies (a valid one with one field set to an edge value or to arbitrary JSON:
huge ints, lone surrogates, nesting) and raw bytes must never get a 5xx, and a 4xx carries OpenAI's
error object. The server here caps max_tokens at 4, so that every valid request stays cheap.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

httpx = pytest.importorskip("httpx")

from tameshi.server.config import DEFAULT_SERVED_NAME, ServerConfig  # noqa: E402

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same bounded run in CI every time; a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text that includes what JSON can carry but UTF-8 cannot (lone surrogates), and control characters.
any_text = st.text(st.characters() | st.sampled_from(["\ud800", "\udfff", "\x00", "東"]), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)  # any valid Unicode
words = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)
parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=3)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]), "content": text | parts},
    optional={"name": words},
)  # fmt: skip

VALID_SHARED = {
    "model": st.just(DEFAULT_SERVED_NAME),
    "max_tokens": st.integers(1, 4),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 100),
    "min_p": st.floats(0, 1),
    "repetition_penalty": st.floats(0.5, 2),
    "n": st.integers(1, 2),
    "seed": st.integers(-(2**63), 2**63 - 8),
    "stop": words | st.lists(words, max_size=4),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "presence_penalty": st.just(0.0),
    "frequency_penalty": st.just(0.0),
    "logit_bias": st.just({}),
    "min_tokens": st.integers(0, 1),
    "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "user": text,
    "some_future_field": json_values,
}
VALID_CHAT = {
    **VALID_SHARED,
    "max_completion_tokens": st.integers(1, 4),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 20),
    "response_format": st.just({"type": "text"}),
    "tools": st.just([]),
}
VALID_COMPLETION = {
    **VALID_SHARED,
    "logprobs": st.integers(0, 20),
    "echo": st.just(False),
    "suffix": st.just(""),
}
prompts = (
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
    | st.lists(st.integers(0, 49151), min_size=1, max_size=8)
    | st.lists(words, min_size=1, max_size=2)
)


def consistent(body: dict) -> dict:
    """Drop the combinations OpenAI refuses: stream_options without stream, top_logprobs alone."""
    if not body.get("stream"):
        body.pop("stream_options", None)
    if "messages" in body and body.get("logprobs") is not True:
        body.pop("top_logprobs", None)
    return body


valid_chat = st.fixed_dictionaries(
    {"messages": st.lists(message, min_size=1, max_size=3)}, optional=VALID_CHAT
).map(consistent)
valid_completion = st.fixed_dictionaries({"prompt": prompts}, optional=VALID_COMPLETION).map(consistent)

# Values just outside the ranges, and what OpenAI knows but this server refuses.
EDGES = {
    "model": st.just("gpt-4o"),
    "max_tokens": st.integers(-2, 0) | st.integers(5, 10**12),
    "max_completion_tokens": st.integers(-2, 0) | st.integers(5, 10**12),
    "temperature": st.floats(2.01, 1e300),
    "top_p": st.floats(-1, 0) | st.floats(1.01, 5),
    "top_k": st.integers(-(10**6), -2),
    "min_p": st.floats(1.01, 9),
    "repetition_penalty": st.floats(-5, 0) | st.floats(10.01, 1e9),
    "n": st.integers(-5, 0) | st.integers(9, 10**9),
    "seed": st.integers(2**63, 2**80),
    "stop": st.lists(words, min_size=5, max_size=9) | st.just([""]),
    "presence_penalty": st.floats(0.1, 2),
    "logit_bias": st.just({"5": 10.0}),
    "min_tokens": st.integers(5, 10**9),
    "logprobs": st.integers(21, 10**9),
    "top_logprobs": st.integers(21, 10**9),
    "echo": st.just(True),
    "suffix": words,
    "best_of": st.integers(3, 99),
    "tools": st.just([{"type": "function"}]),
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "json_schema"}, {"type": "xml"}]),
    "messages": st.just([]) | st.lists(st.fixed_dictionaries({"role": st.just("wizard"), "content": any_text}), min_size=1),
    "prompt": st.just("") | st.just([]) | st.lists(st.integers(49152, 10**12), min_size=1) | st.lists(words, min_size=9),
    "stream_options": st.just({"include_usage": "yes"}),
}  # fmt: skip


@st.composite
def mutated(draw, valid: st.SearchStrategy) -> dict:
    """A valid body with one field (perhaps a new one) set to an edge value or to arbitrary JSON."""
    body = draw(valid)
    key = draw(st.sampled_from(sorted({*body, *EDGES, "some_future_field"})))
    body[key] = draw(EDGES[key] | json_values) if key in EDGES else draw(json_values)
    return body


raw_bodies = st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode())


@pytest.fixture(scope="module")
def http(serve):
    running = serve(ServerConfig(max_tokens=4))
    with httpx.Client(base_url=running.url, timeout=120) as client:
        yield client


def check(response: httpx.Response, must_succeed: bool = False) -> None:
    assert response.status_code < 500, response.text
    if must_succeed:
        assert response.status_code == 200, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in response.text.split("\n\n") if line]
        assert events[-1] == "data: [DONE]"
        assert all("error" not in json.loads(e[len("data: ") :]) for e in events[:-1]), response.text
    else:
        body = response.json()
        assert body["choices"] and all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
        assert body["usage"]["completion_tokens"] <= 4 * len(body["choices"])


def post(http: httpx.Client, path: str, body: dict, must_succeed: bool) -> None:
    content = json.dumps(body).encode()
    check(http.post(path, content=content, headers={"Content-Type": "application/json"}), must_succeed)


@pytest.mark.slow
@settings(FUZZ, max_examples=40)
@given(body=valid_chat)
def test_fuzz_valid_chat_bodies_succeed(http, body):
    post(http, "/v1/chat/completions", body, must_succeed=True)


@pytest.mark.slow
@settings(FUZZ, max_examples=40)
@given(body=valid_completion)
def test_fuzz_valid_completion_bodies_succeed(http, body):
    post(http, "/v1/completions", body, must_succeed=True)


@pytest.mark.slow
@FUZZ
@given(body=mutated(valid_chat))
def test_fuzz_mutated_chat_bodies_never_5xx(http, body):
    post(http, "/v1/chat/completions", body, must_succeed=False)


@pytest.mark.slow
@FUZZ
@given(body=mutated(valid_completion))
def test_fuzz_mutated_completion_bodies_never_5xx(http, body):
    post(http, "/v1/completions", body, must_succeed=False)


@pytest.mark.slow
@settings(FUZZ, max_examples=40)
@given(raw=raw_bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_fuzz_raw_bodies(http, raw, path):
    check(http.post(path, content=raw, headers={"Content-Type": "application/json"}))


def test_server_survived_the_fuzz(http, server_llm):
    assert http.get("/health").status_code == 200
    assert server_llm.async_engine.is_alive
