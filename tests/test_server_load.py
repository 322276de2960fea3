"""Check 2: 200 concurrent streaming clients, 30% of them hanging up at random points.

Afterwards the server must be healthy, every KV block free, and each greedy answer that ran to the end
equal to the same request served alone. The clients that hang up ask for 400 tokens with EOS ignored:
if their aborts did not reach the engine, it would still be busy with them long after the others are
done, and the idle check below would fail.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

httpx = pytest.importorskip("httpx")

CLIENTS = 200
DISCONNECT_SHARE = 0.3
MAX_TOKENS = 12
QUESTIONS = [
    "What is the capital of Japan?", "Name three colours.", "How many legs does a spider have?",
    "Say hello in French.", "What is 7 times 8?", "Describe the sea in one sentence.",
    "日本の首都はどこですか？", "What is the boiling point of water?", "Give me a fruit.",
    "Who wrote Hamlet?", "Count from one to five.", "What colour is the sky?",
    "東京の天気はどうですか？", "Name a planet.", "What is a cat?", "Translate 'thank you' to Japanese.",
    "What day comes after Monday?", "Tell me a short fact about the moon.", "What is rain?", "Spell 'cat'.",
]  # fmt: skip


def _body(question: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        **extra,
    }


async def _stream(client: httpx.AsyncClient, body: dict, events: list) -> str:
    """Read one SSE stream to [DONE]; `events` fills as chunks arrive (the caller sees progress)."""
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        text = []
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                return "".join(text)
            chunk = json.loads(line[len("data: ") :])
            assert "error" not in chunk, chunk
            events.append(chunk)
            for choice in chunk["choices"]:
                text.append(choice["delta"].get("content") or "")
    raise AssertionError("stream ended without [DONE]")


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
def test_200_streams_with_random_disconnects(server, server_llm):
    solo = {}
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for q in QUESTIONS:  # one at a time: each answer computed alone
            r = c.post("/v1/chat/completions", json=_body(q))
            solo[q] = r.json()["choices"][0]["message"]["content"]
    aborted_before = _metric(server.url, "tameshi_requests_aborted_total")

    rng = random.Random(7)
    leavers = set(rng.sample(range(CLIENTS), int(CLIENTS * DISCONNECT_SHARE)))
    events: dict[int, list] = {i: [] for i in range(CLIENTS)}

    async def main():
        limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=CLIENTS + 10)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client:
            tasks = {}
            for i in range(CLIENTS):
                q = QUESTIONS[i % len(QUESTIONS)]
                body = _body(q, max_tokens=400, ignore_eos=True) if i in leavers else _body(q)
                tasks[i] = asyncio.create_task(_stream(client, body, events[i]))

            async def hang_up(i):  # at a random point: before the headers, mid-prefill, mid-stream
                await asyncio.sleep(rng.uniform(0, 4))
                tasks[i].cancel()

            await asyncio.gather(*(hang_up(i) for i in leavers))
            done = await asyncio.gather(*tasks.values(), return_exceptions=True)
            return dict(zip(tasks, done, strict=True))

    started = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - started

    for i, result in results.items():
        if i in leavers:
            assert isinstance(result, str | asyncio.CancelledError), result
        else:
            assert result == solo[QUESTIONS[i % len(QUESTIONS)]], (i, result)
    hung_up_mid_stream = sum(
        1 for i in leavers if events[i] and isinstance(results[i], asyncio.CancelledError)
    )
    assert hung_up_mid_stream >= 20  # the test really exercised mid-stream disconnects

    deadline = time.monotonic() + 10
    while True:  # aborts travel through the engine thread: poll briefly
        stats = server_llm.async_engine.stats()
        if stats.kv_blocks_used == 0 and stats.running == stats.waiting == 0:
            break
        assert time.monotonic() < deadline, f"KV blocks not freed: {stats}"
        time.sleep(0.05)
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert _metric(server.url, "tameshi_requests_aborted_total") - aborted_before >= hung_up_mid_stream
    assert _metric(server.url, "tameshi_requests_in_flight") == 0
    assert _metric(server.url, "tameshi_kv_blocks_used") == 0
    print(f"\n{CLIENTS} streams ({len(leavers)} hung up) in {elapsed:.1f} s")
