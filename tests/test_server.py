"""The OpenAI-compatible server, driven by the unmodified official `openai` client (and httpx for what
that client will not send): shapes, streaming, stop, seeds, n, logprobs, errors, API key, disconnects.

The reference for every greedy answer is tameshi's own Python API over the same model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from tameshi.engine.async_engine import AsyncEngine  # noqa: E402
from tameshi.engine.sequence import StepOutput  # noqa: E402
from tameshi.server.backend import ServedModel  # noqa: E402
from tameshi.server.config import DEFAULT_SERVED_NAME, ServerConfig  # noqa: E402

MODEL = DEFAULT_SERVED_NAME
ASK = [{"role": "user", "content": "What is the capital of Japan? Answer in one sentence."}]
OPEN = [{"role": "user", "content": "Write a short poem about the sea."}]  # many good answers: for sampling
JA_PROMPT = "日本の首都は東京です。東京は"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def greedy(n: int) -> dict:
    return {"max_new_tokens": n, "do_sample": False}


def wait_for_idle(llm, seconds: float = 10.0) -> None:
    """KV blocks back to 0 and nothing running, polled briefly (aborts travel through the engine thread)."""
    deadline = time.monotonic() + seconds
    while True:
        stats = llm.async_engine.stats()
        if stats.kv_blocks_used == 0 and stats.running == stats.waiting == 0:
            return
        assert time.monotonic() < deadline, f"engine not idle: {stats}"
        time.sleep(0.05)


# -- check 1: the official client ------------------------------------------------------------------
def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_body_is_read_as_json_whatever_its_content_type(http):
    """`curl -d` sends form encoding unless told otherwise; the body is JSON all the same."""
    body = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = http.post("/v1/completions", content=body, headers=headers)
        assert r.status_code == 200, (content_type, r.text)
        assert r.json()["usage"]["completion_tokens"] >= 1
    r = http.post(
        "/v1/completions", content=b"prompt=Hi", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_chat_equals_the_python_api(client, server_llm):
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, temperature=0)
    expected = server_llm.chat(ASK, greedy(24))
    choice = r.choices[0]
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content == expected.text and "Tokyo" in choice.message.content
    assert choice.finish_reason == expected.finish_reason
    assert r.usage.prompt_tokens == len(server_llm.encode_chat(ASK))
    assert r.usage.completion_tokens == len(expected.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_has_openai_chunk_sequence_and_usage(client):
    whole = client.chat.completions.create(model=MODEL, messages=ASK, max_completion_tokens=24, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, max_completion_tokens=24, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    first, *middle, finish, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" and c.id == first.id for c in chunks)
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.choices[0].finish_reason is None for c in middle)
    assert "".join(c.choices[0].delta.content for c in middle) == whole.choices[0].message.content
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert finish.choices[0].delta.content is None
    assert last.choices == [] and last.usage == whole.usage


def test_completions_stream_and_not_equal_the_python_api(client, server_llm):
    prompt = "The three primary colours are"
    expected = server_llm.generate(prompt, greedy(20))
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == expected.text and r.choices[0].finish_reason == expected.finish_reason
    assert r.usage.prompt_tokens == expected.prompt_tokens
    assert r.usage.completion_tokens == len(expected.token_ids)
    stream = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage == r.usage and chunks[-1].choices == []
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == expected.finish_reason


def test_completions_default_max_tokens_is_openais_16(client):
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_stop_cuts_before_the_stop_string(client):
    full = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    word = text.split()[3]
    cut = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, temperature=0, stop=[word])
    assert cut.choices[0].message.content == text[: text.index(word)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=24, temperature=0, stop=word, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[: text.index(word)]


def test_seed_reproduces_a_sampled_answer(client):
    def ask(seed):
        r = client.chat.completions.create(
            model=MODEL, messages=OPEN, max_tokens=24, temperature=1.0, seed=seed
        )
        return r.choices[0].message.content

    assert ask(1234) == ask(1234)
    assert ask(1234) != ask(1235)


def test_n2_gives_seed_and_seed_plus_one(client):
    kwargs = dict(model=MODEL, messages=OPEN, max_tokens=16, temperature=1.0)
    both = client.chat.completions.create(n=2, seed=77, **kwargs)
    assert [c.index for c in both.choices] == [0, 1]
    singles = [client.chat.completions.create(seed=s, **kwargs) for s in (77, 78)]
    assert [c.message.content for c in both.choices] == [s.choices[0].message.content for s in singles]
    assert both.choices[0].message.content != both.choices[1].message.content
    assert both.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    assert both.usage.prompt_tokens == singles[0].usage.prompt_tokens  # the prompt counts once
    texts = {0: "", 1: ""}
    for chunk in client.chat.completions.create(n=2, seed=77, stream=True, **kwargs):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert [texts[0], texts[1]] == [c.message.content for c in both.choices]


def test_a_bad_field_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, temperature=5)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert e.value.code == "model_not_found"


def test_japanese_stream_reassembles_without_replacement_chars(client):
    whole = client.completions.create(model=MODEL, prompt=JA_PROMPT, max_tokens=40, temperature=0)
    text = whole.choices[0].text
    assert sum(ord(c) > 0x3000 for c in text) >= 5  # the model really answers in Japanese here
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=JA_PROMPT, max_tokens=40, temperature=0, stream=True
    )]  # fmt: skip
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    ja_chat = [{"role": "user", "content": "日本の首都はどこですか？日本語で答えてください。"}]
    whole = client.chat.completions.create(model=MODEL, messages=ja_chat, max_tokens=40, temperature=0)
    deltas = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=ja_chat, max_tokens=40, temperature=0, stream=True
    )]  # fmt: skip
    assert "".join(deltas) == whole.choices[0].message.content and not any("\ufffd" in d for d in deltas)


def test_chat_logprobs(client, server_llm):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        # greedy: the chosen token is the most likely one, with the same logprob
        assert item.top_logprobs[0].token == item.token and item.top_logprobs[0].logprob == item.logprob
        assert [t.logprob for t in item.top_logprobs] == sorted(
            (t.logprob for t in item.top_logprobs), reverse=True
        )
    special = {
        server_llm.tokenizer.decode([i], skip_special_tokens=False) for i in server_llm.tokenizer.special_ids
    }
    joined = b"".join(bytes(i.bytes) for i in content if i.token not in special).decode()
    assert joined.lstrip() == r.choices[0].message.content  # the bytes spell the answer exactly


def test_completion_logprobs_and_streamed_logprobs(client):
    kwargs = dict(model=MODEL, prompt=JA_PROMPT, max_tokens=12, temperature=0, logprobs=2)
    r = client.completions.create(**kwargs)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert lp.text_offset == sorted(lp.text_offset) and all(len(t) <= 2 for t in lp.top_logprobs)
    streamed = [
        v
        for c in client.completions.create(stream=True, **kwargs)
        for v in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed == lp.token_logprobs


def test_completion_text_offset_counts_characters_of_the_text(client):
    """Japanese characters take one or two tokens here: a token that completes none sits where its
    character will start, streamed or not, and no offset runs past the text."""
    kwargs = dict(model=MODEL, prompt="日本の首都は", max_tokens=10, temperature=0, logprobs=1)
    r = client.completions.create(**kwargs)
    text, offsets = r.choices[0].text, r.choices[0].logprobs.text_offset
    assert len(offsets) == 10 and len(set(offsets)) < 10  # some token completed no character
    assert offsets == sorted(offsets) and offsets[-1] <= len(text)
    streamed, released = [], 0  # one token per chunk: it sits after the text released before it
    for chunk in client.completions.create(stream=True, **kwargs):
        if chunk.choices and chunk.choices[0].logprobs:
            assert chunk.choices[0].logprobs.text_offset == [released]
            streamed.append(released)
            released += len(chunk.choices[0].text)
    assert streamed == offsets


def test_response_format_json_object_needs_json_in_the_prompt(client):
    with pytest.raises(openai.BadRequestError, match="JSON"):
        client.chat.completions.create(model=MODEL, messages=ASK, response_format={"type": "json_object"})
    asks_json = [{"role": "user", "content": "Reply in JSON with a key 'capital' for Japan."}]
    r = client.chat.completions.create(
        model=MODEL, messages=asks_json, max_tokens=8, response_format={"type": "json_object"}
    )
    assert r.choices[0].finish_reason in ("stop", "length")


# -- health, metrics, failures that must stay local --------------------------------------------------
def test_health_and_metrics(http, server_llm):
    assert http.get("/health").json() == {"status": "ok"}
    http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    text = http.get("/metrics").text
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["tameshi_engine_alive"] == 1 and values["tameshi_generation_tokens_total"] >= 2
    assert values["tameshi_kv_blocks_total"] == server_llm.engine.stats().kv_blocks_total
    assert 'tameshi_requests_total{route="/v1/completions",code="200"}' in text
    assert "tameshi_num_requests_waiting" in text and "tameshi_time_to_first_token_seconds_count" in text


def test_extreme_but_valid_sampling_values_leave_the_engine_alive(http, server_llm):
    """Found by the fuzz: a subnormal temperature once sent NaN into torch.multinomial and ended the loop."""
    for extreme in ({"temperature": 5e-324}, {"temperature": 1.0, "repetition_penalty": 1e-300, "seed": 3}):
        r = http.post("/v1/chat/completions", json=_chat(**extreme))
        assert r.status_code == 200, r.text
    assert server_llm.async_engine.is_alive and http.get("/health").status_code == 200


@pytest.fixture(scope="module")
def two_slots(serve):
    """A server that runs at most two engine requests at once."""
    return serve(ServerConfig(max_concurrent=2))


def test_too_many_requests_in_flight_get_429_with_retry_after(two_slots, server_llm):
    long = {"messages": ASK, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=two_slots.url, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json={**long, "n": 2}) as r:
            lines = r.iter_lines()  # kept: dropping a half-read iterator closes the connection
            next(lines)  # the stream is open: both slots are taken
            busy = c.post("/v1/chat/completions", json=_chat())
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "server_busy"
            assert busy.headers["retry-after"] == "1"
        wait_for_idle(server_llm)
        assert c.post("/v1/chat/completions", json=_chat()).status_code == 200


def test_more_choices_than_max_concurrent_is_a_400_not_a_429(two_slots):
    """Such a request could never run, and the official client would retry a 429."""
    asks = [("/v1/chat/completions", _chat(n=3)), ("/v1/completions", {"prompt": ["a", "b"], "n": 2})]
    with httpx.Client(base_url=two_slots.url, timeout=30) as c:
        for path, body in asks:
            r = c.post(path, json=body)
            error = r.json()["error"]
            assert r.status_code == 400 and error["type"] == "invalid_request_error", r.text
            assert error["param"] == "n" and "limit of 2" in error["message"]


def test_dead_engine_gives_503_on_health_and_requests(serve, server_llm):
    dead = AsyncEngine(server_llm.engine)
    dead.start()
    dead.stop()
    served = dataclasses.replace(ServedModel.from_llm(server_llm, MODEL), engine=dead)
    running = serve(served=served)
    with httpx.Client(base_url=running.url) as c:
        assert c.get("/health").status_code == 503
        r = c.post("/v1/chat/completions", json={"messages": ASK})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"


class _FlakyEngine:
    """The real engine, except that requests seeded 666 raise after their first output (a stand-in bug)."""

    def __init__(self, inner):
        self.inner = inner

    async def generate(self, ids, params):
        async with contextlib.aclosing(self.inner.generate(ids, params)) as outputs:
            async for out in outputs:
                yield out
                if params.seed == 666:
                    raise RuntimeError("kaboom")

    @property
    def is_alive(self):
        return self.inner.is_alive

    def stats(self):
        return self.inner.stats()


def test_an_exception_fails_only_its_own_request(serve, server_llm):
    base = ServedModel.from_llm(server_llm, MODEL)

    def encode_chat(messages):
        if messages[-1]["content"] == "boom":
            raise RuntimeError("template bug")
        return base.encode_chat(messages)

    served = dataclasses.replace(base, engine=_FlakyEngine(base.engine), encode_chat=encode_chat)
    running = serve(served=served)
    c = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "boom"}])
    assert e.value.status_code == 500 and "RuntimeError" in e.value.message
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model=MODEL, messages=ASK, seed=666, max_tokens=64)
    with pytest.raises(openai.APIError, match="RuntimeError"):  # mid-stream: an error event, then [DONE]
        for _ in c.chat.completions.create(model=MODEL, messages=ASK, seed=666, max_tokens=64, stream=True):
            pass
    ok = c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0)
    assert ok.choices[0].message.content
    wait_for_idle(server_llm)
    assert httpx.get(f"{running.url}/health").status_code == 200


def test_client_disconnects_abort_and_free_blocks(server, server_llm):
    body = {"messages": ASK, "max_tokens": 1500, "ignore_eos": True, "temperature": 0}
    metrics_before = _metric(server, "tameshi_requests_aborted_total")
    # non-streamed: the client gives up after 1 s, long before 1500 tokens could exist
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=1.0)
    wait_for_idle(server_llm, 10)
    # streamed: read three events, then hang up
    with (
        httpx.Client(timeout=30) as c,
        c.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}) as r,
    ):
        lines = r.iter_lines()
        assert [next(lines) for _ in range(5)][4].startswith("data: ")
    wait_for_idle(server_llm, 10)
    assert _metric(server, "tameshi_requests_aborted_total") == metrics_before + 2


def _metric(server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# -- check 4: API key --------------------------------------------------------------------------------
def test_api_key_guards_every_route_but_health(serve):
    running = serve(ServerConfig(api_key="sekrit"))
    routes = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
              ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/no/such/route")]  # fmt: skip
    body = {"messages": ASK, "prompt": "Hi", "max_tokens": 2}
    with httpx.Client(base_url=running.url, timeout=60) as c:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
            r = c.request(method, path, json=body, headers={"Authorization": "Bearer sekrit"})
            assert r.status_code != 401, (method, path)
        assert c.get("/health").status_code == 200
    wrong = openai.OpenAI(base_url=f"{running.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=f"{running.url}/v1", api_key="sekrit", max_retries=0)
    assert right.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage.completion_tokens >= 1


@pytest.fixture(scope="module")
def keyed(serve):
    """A server with an API key that lets one browser origin in."""
    return serve(ServerConfig(api_key="sekrit", allow_origins=("http://app.example",)))


def test_the_bearer_scheme_is_case_insensitive(keyed):
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        for scheme in ("bearer", "BEARER", "beaRer"):
            assert c.get("/v1/models", headers={"Authorization": f"{scheme} sekrit"}).status_code == 200
        for wrong in ("bearer wrong", "Basic sekrit", "bearersekrit"):
            assert c.get("/v1/models", headers={"Authorization": wrong}).status_code == 401


def test_metrics_name_the_route_of_form_bodies_and_401s(serve):
    """Once counted as route="unmatched": a middleware's copy of the scope hid the router's route."""
    running = serve(ServerConfig(api_key="sekrit"))
    key = {"Authorization": "Bearer sekrit"}
    body = json.dumps({"prompt": "Hi", "max_tokens": 2})
    with httpx.Client(base_url=running.url, timeout=60) as c:
        form = {**key, "Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
        assert c.post("/v1/completions", content=body, headers=form).status_code == 200
        assert c.post("/v1/completions", content=body).status_code == 401
        assert c.get(f"/v1/models/{MODEL}").status_code == 401
        assert c.get("/no/such/route").status_code == 401
        text = c.get("/metrics", headers=key).text
    assert 'tameshi_requests_total{route="/v1/completions",code="200"} 1' in text
    assert 'tameshi_requests_total{route="/v1/completions",code="401"} 1' in text
    assert 'tameshi_requests_total{route="/v1/models/{model_id:path}",code="401"} 1' in text
    assert 'tameshi_requests_total{route="unmatched",code="401"} 1' in text  # only the unknown path


def test_cors_lets_an_allowed_origin_in_without_a_key_on_the_preflight(keyed, http, capsys):
    origin = "http://app.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"]
        r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                   headers={"Origin": origin, "Authorization": "Bearer sekrit"})  # fmt: skip
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        r = c.get("/v1/models", headers={"Origin": origin})  # the app can read why it was refused
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
        r = c.options("/v1/chat/completions", headers={**preflight, "Origin": "http://other.example"})
        assert "access-control-allow-origin" not in r.headers
    r = http.options("/v1/chat/completions", headers=preflight)  # not asked for: no CORS at all
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers

    from tameshi.cli import main

    # the option reaches ServerConfig, which refuses an origin no browser sends (before any model loads)
    assert main(["serve", "--allow-origin", "*", "--allow-origin", "localhost:3000"]) == 1
    assert "allow_origins takes '*' or an origin" in capsys.readouterr().err


# -- check 3: bad input, each a 4xx OpenAI error object ------------------------------------------------
def _chat(**fields) -> dict:
    return {"model": MODEL, "messages": ASK, "max_tokens": 4, **fields}


BAD_REQUESTS = [
    ("malformed json", "/v1/chat/completions", b'{"messages": [', 400, None),
    ("not an object", "/v1/chat/completions", b"[1, 2]", 400, None),
    ("empty body", "/v1/chat/completions", b"", 400, None),
    ("NaN", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, "temperature"),
    ("messages a string", "/v1/chat/completions", _chat(messages="hi"), 400, "messages"),
    ("no messages", "/v1/chat/completions", _chat(messages=[]), 400, "messages"),
    ("bad role", "/v1/chat/completions", _chat(messages=[{"role": "wizard", "content": "x"}]), 400, None),
    ("image part", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400, None),
    ("temperature string", "/v1/chat/completions", _chat(temperature="hot"), 400, "temperature"),
    ("n as string", "/v1/chat/completions", _chat(n="2"), 400, "n"),
    ("stream as int", "/v1/chat/completions", _chat(stream=1), 400, "stream"),
    ("temperature 3", "/v1/chat/completions", _chat(temperature=3), 400, "temperature"),
    ("top_p 0", "/v1/chat/completions", _chat(top_p=0), 400, "top_p"),
    ("n 0", "/v1/chat/completions", _chat(n=0), 400, "n"),
    ("n 10^6", "/v1/chat/completions", _chat(n=10**6), 400, "n"),
    ("max_tokens 0", "/v1/chat/completions", _chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens 10^9", "/v1/chat/completions", _chat(max_tokens=10**9), 400, "max_tokens"),
    ("max_completion_tokens 10^9", "/v1/chat/completions", _chat(max_completion_tokens=10**9), 400, "max_tokens"),
    ("huge int", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 1' + b"0" * 5000 + b"}", 400, None),
    ("seed 2^70", "/v1/chat/completions", _chat(seed=2**70, temperature=1), 400, "seed"),
    ("five stops", "/v1/chat/completions", _chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("long stop", "/v1/chat/completions", _chat(stop=["x" * 1000]), 400, "stop"),
    ("top_logprobs 50", "/v1/chat/completions", _chat(logprobs=True, top_logprobs=50), 400, "top_logprobs"),
    ("top_logprobs without logprobs", "/v1/chat/completions", _chat(top_logprobs=2), 400, "top_logprobs"),
    ("stream_options without stream", "/v1/chat/completions", _chat(stream_options={"include_usage": True}), 400, "stream_options"),
    ("json_schema", "/v1/chat/completions", _chat(response_format={"type": "json_schema", "json_schema": {}}), 400, "response_format"),
    ("tools", "/v1/chat/completions", _chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    ("presence_penalty", "/v1/chat/completions", _chat(presence_penalty=1.0), 400, "presence_penalty"),
    ("lone surrogate", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}', 400, None),
    ("min_tokens > max_tokens", "/v1/chat/completions", _chat(min_tokens=9), 400, "min_tokens"),
    ("prompt over the context", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": "hello " * 2100}]), 400, "messages"),
    ("max_tokens past the context", "/v1/chat/completions", _chat(max_tokens=2040), 400, "max_tokens"),
    ("unknown model", "/v1/chat/completions", _chat(model="gpt-4o"), 404, "model"),
    ("empty prompt", "/v1/completions", {"prompt": "", "max_tokens": 2}, 400, None),
    ("empty prompt list", "/v1/completions", {"prompt": [], "max_tokens": 2}, 400, "prompt"),
    ("token id past vocab", "/v1/completions", {"prompt": [1, 10**9], "max_tokens": 2}, 400, None),
    ("negative token id", "/v1/completions", {"prompt": [-1], "max_tokens": 2}, 400, None),
    ("prompts x n", "/v1/completions", {"prompt": ["a"] * 5, "n": 2, "max_tokens": 2}, 400, "n"),
    ("logprobs 99", "/v1/completions", {"prompt": "a", "logprobs": 99, "max_tokens": 2}, 400, "logprobs"),
    ("echo", "/v1/completions", {"prompt": "a", "echo": True, "max_tokens": 2}, 400, "echo"),
    ("prompt of ids over the context", "/v1/completions", {"prompt": [5] * 3000, "max_tokens": 2}, 400, "prompt"),
    ("prompt over the context", "/v1/completions", {"prompt": "hello " * 2100, "max_tokens": 2}, 400, "prompt"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_input_is_a_4xx_openai_error(http, name, path, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"].endswith(".")
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error


def test_context_overflow_says_the_numbers(http):
    r = http.post("/v1/chat/completions", json=_chat(messages=[{"role": "user", "content": "hello " * 2100}]))
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and "2048" in error["message"]
    r = http.post("/v1/chat/completions", json=_chat(max_tokens=2040))
    assert "2040 in the completion" in r.json()["error"]["message"]


def test_oversized_bodies_get_413_before_parsing(http):
    ten_mb = b'{"messages": [{"role": "user", "content": "' + b"x" * (10 * 2**20) + b'"}]}'
    r = http.post("/v1/chat/completions", content=ten_mb, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"x" * 2**20

    r = http.post("/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_wrong_method_and_unknown_route_are_openai_errors(http):
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = http.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_still_healthy_after_the_abuse(http, server_llm):
    wait_for_idle(server_llm)
    assert http.get("/health").status_code == 200
    r = http.post("/v1/chat/completions", json=_chat(temperature=0))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_serve_forever_on_a_taken_port_is_one_error_not_a_hang():
    """uvicorn runs beside the engine, which keeps the calling thread (AsyncEngine.run_here): a
    server that cannot listen stops the engine too, and serve_forever says so in one line."""
    import socket

    from fastapi import FastAPI

    from tameshi.errors import TameshiError
    from tameshi.server.launch import serve_forever

    class Idle:  # an engine with nothing to do
        def has_unfinished(self) -> bool:
            return False

        def stats(self) -> None:
            return None

    engine = AsyncEngine(Idle())  # type: ignore[arg-type]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TameshiError, match=f"without serving on 127.0.0.1:{port}"):
            serve_forever(FastAPI(), engine, "127.0.0.1", port, log_level="critical")
    assert not engine.is_alive


class _EndlessEngine:
    """An Engine whose requests never finish on their own: one token per step until aborted."""

    def __init__(self, token_id: int, stats) -> None:
        self.token_id, self._stats = token_id, stats
        self.live: set[int] = set()
        self._ids = itertools.count()

    def add_request(self, prompt_ids, params) -> int:
        self.live.add(request := next(self._ids))
        return request

    def step(self) -> list:
        time.sleep(0.01)
        return [(i, StepOutput("a", [self.token_id])) for i in self.live]

    def has_unfinished(self) -> bool:
        return bool(self.live)

    def abort(self, request: int) -> None:
        self.live.discard(request)

    def take_failures(self) -> list:
        return []

    def stats(self):
        return self._stats


def test_one_sigterm_fails_what_outlives_the_drain_through_the_engine(server_llm, capfd):
    """What still runs when the drain ends gets the engine's 503 (streamed: an error event, then
    [DONE]), before uvicorn's own window would cut it (a bare 500, a cut stream, a traceback)."""
    from tameshi.server.app import create_app
    from tameshi.server.launch import serve_forever

    token = server_llm.tokenizer.encode("a", add_special_tokens=False)[0]
    engine = AsyncEngine(_EndlessEngine(token, server_llm.engine.stats()))  # type: ignore[arg-type]
    app = create_app(dataclasses.replace(ServedModel.from_llm(server_llm, MODEL), engine=engine))
    with socket.socket() as s:  # serve_forever takes a port: one the OS just found free
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    body = {"prompt": "Hi", "max_tokens": 100}
    answers: dict = {}

    def plain() -> None:
        answers["plain"] = httpx.post(f"{url}/v1/completions", json=body, timeout=30)

    def streamed() -> None:
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=30) as r:
            answers["streamed"] = [line for line in r.iter_lines() if line]

    def clients() -> None:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                time.sleep(0.05)
            both = [threading.Thread(target=plain), threading.Thread(target=streamed)]
            for t in both:
                t.start()
            while app.state.metrics.running < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # once: a drain, not a stop
        for t in both:
            t.join(timeout=30)

    helper = threading.Thread(target=clients, daemon=True)
    helper.start()
    began = time.monotonic()
    serve_forever(app, engine, "127.0.0.1", port, log_level="error", drain_s=0.5)
    helper.join(timeout=30)
    assert time.monotonic() - began < 5 and not engine.is_alive  # the drain ended it, not uvicorn
    plain_answer = answers["plain"]
    assert plain_answer.status_code == 503, plain_answer.text
    assert plain_answer.json()["error"]["code"] == "engine_dead"
    *tokens, failed, done = answers["streamed"]
    assert tokens and done == "data: [DONE]"
    assert json.loads(failed[len("data: ") :])["error"]["code"] == "engine_dead"
    logged = capfd.readouterr().err
    assert "Traceback" not in logged and "graceful shutdown exceeded" not in logged, logged


def test_nan_logits_are_the_servers_500_not_the_requests_400():
    """ModelOutputError (the model's logits came out NaN) is the model's fault: a 500 server_error in
    OpenAI's shape, where other TameshiErrors (bad input) are 400s."""
    from tameshi.errors import InvalidRequestError, ModelOutputError
    from tameshi.server.errors import from_exception

    err = from_exception(ModelOutputError("the model's logits came out NaN"))
    assert err.status == 500 and err.body()["error"]["type"] == "server_error"
    assert "NaN" in err.body()["error"]["message"]
    assert from_exception(InvalidRequestError("bad")).status == 400
