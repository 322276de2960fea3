"""`tameshi serve` under load: requests/s, TTFT p50/p99 and tokens/s at 1, 8 and 32 concurrent clients.

Each server runs in its own process on a free loopback port; this process is only the load generator
(httpx, asyncio). Every client sends streamed chat completions (greedy, --tokens new tokens at most)
one after another until it has sent --per-client requests. Measured on the embedded default model
(SmolLM2-135M-Instruct, whose GGUF is Q4_1), CPU. The peer, llama-cpp-python's OpenAI server
(`python -m llama_cpp.server`) on the same GGUF file, runs in the same benchmark when its `server`
extra is importable by this Python or by --peer-python; otherwise the table says it was not measured.

Run: python benchmarks/serve_load.py [--tokens 64] [--per-client 2] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

QUESTIONS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a rainbow forms.",
    "Describe a walk through Kyoto in autumn.",
    "What should I pack for a week of hiking?",
    "日本の四季について説明してください。",
    "Give me three ideas for a birthday party.",
    "Explain what a compiler does.",
    "Tell me about the history of tea.",
]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    url: str
    model: str


@dataclass
class Level:
    concurrency: int
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    done: int = 0
    failed: int = 0
    tokens_from_usage: bool = True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, path: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become healthy")


def start_tameshi(quantize: str | None, log) -> Server:
    port = _free_port()
    cmd = [sys.executable, "-m", "tameshi", "serve", "--port", str(port), "--log-level", "warning"]
    if quantize:
        cmd += ["--quantize", quantize]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(proc, url, "/health")
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    return Server("tameshi" + (f" --quantize {quantize}" if quantize else " (fp32)"), proc, url, model)


def peer_python(explicit: str | None) -> str | None:
    """A Python that can run llama_cpp.server: --peer-python, else this one, else None."""
    python = explicit or sys.executable
    check = subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True)
    return python if check.returncode == 0 else None


# `python -m llama_cpp.server` with llama.cpp's extra CPU buffer types (weight repacking, AMX) turned off:
# the server has no flag for it. Needed where those kernels crash: a source build of 0.3.36 with
# GGML_NATIVE on an AMX Xeon segfaulted on its first multi-token batch.
_NO_REPACK = """
import sys, llama_cpp, llama_cpp.llama
default = llama_cpp.llama_model_default_params
def params():
    p = default()
    p.use_extra_bufts = False
    return p
llama_cpp.llama.llama_cpp.llama_model_default_params = params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


def start_llama_cpp(python: str, gguf: str, threads: int, no_repack: bool, log) -> Server:
    port = _free_port()
    launch = ["-c", _NO_REPACK] if no_repack else ["-m", "llama_cpp.server"]
    cmd = [python, *launch, "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "8192", "--n_threads", str(threads), "--n_threads_batch", str(threads),
           # by default a new request cuts the stream in progress; queue them instead, as a server should
           "--interrupt_requests", "False"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(proc, url, "/v1/models")
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    name = "llama-cpp-python server" + (" (no repack)" if no_repack else "")
    return Server(name, proc, url, model)


async def one_request(client: httpx.AsyncClient, server: Server, question: str, tokens: int, level: Level):
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first, chunks, usage = None, 0, None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                level.failed += 1
                await r.aread()
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        first = first or time.perf_counter()
    except httpx.HTTPError:  # a stream cut short counts as failed, and the run goes on
        level.failed += 1
        return
    if first is None:
        level.failed += 1
        return
    level.ttft_s.append(first - sent)
    level.done += 1
    if usage:
        level.completion_tokens += usage["completion_tokens"]
    else:  # a server without include_usage: one content chunk per token, as llama.cpp streams
        level.tokens_from_usage = False
        level.completion_tokens += chunks


async def run_level(server: Server, concurrency: int, per_client: int, tokens: int) -> Level:
    level = Level(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=1800, limits=limits) as client:

        async def worker(w: int) -> None:
            for i in range(per_client):
                question = QUESTIONS[(w * per_client + i) % len(QUESTIONS)]
                await one_request(client, server, question, tokens, level)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        level.wall_s = time.perf_counter() - started
    return level


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", info)[1]  # type: ignore[index]
    except (OSError, TypeError):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens of every request")
    ap.add_argument("--per-client", type=int, default=2, help="requests each client sends in turn")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--quantize", nargs="*", default=[None, "int4"], help="tameshi rows: none, int4, int8")
    ap.add_argument("--peer-python", help="a Python with llama-cpp-python[server] (default: this one)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument(
        "--peer-no-repack", action="store_true", help="turn off llama.cpp's weight repacking (see _NO_REPACK)"
    )
    ap.add_argument("--log", default=os.devnull, help="where the servers' own output goes")
    args = ap.parse_args()
    from tameshi.loading.default import default_gguf_path

    gguf = str(default_gguf_path())
    threads = os.cpu_count() or 1
    quantize = [None if q in (None, "none") else q for q in args.quantize]
    starters = [lambda log, q=q: start_tameshi(q, log) for q in quantize]
    python = None if args.no_peer else peer_python(args.peer_python)
    if python:
        starters.append(lambda log: start_llama_cpp(python, gguf, threads, args.peer_no_repack, log))
    rows: list[tuple[str, Level]] = []
    failures: list[str] = []
    with open(args.log, "a") as log:
        for start in starters:
            server = None
            try:
                server = start(log)
                asyncio.run(run_level(server, 1, 1, 8))  # warm-up: first-request costs out of the numbers
                for c in args.concurrency:
                    level = asyncio.run(run_level(server, c, args.per_client, args.tokens))
                    rows.append((server.name, level))
                    print(f"  {server.name}, {c} clients: {level.wall_s:.1f} s", file=sys.stderr)
            except (RuntimeError, httpx.HTTPError) as e:  # a peer that crashes is reported, not fatal
                exited = server.proc.poll() if server else None
                name = server.name if server else "a server"
                failures.append(f"{name} failed: {type(e).__name__}: {e} (process exit code {exited})")
            finally:
                if server is not None:
                    stop(server)

    print(f"\nserve load: {machine()}; streamed chat, greedy, max_tokens {args.tokens}, "
          f"{args.per_client} requests per client; model {os.path.basename(gguf)}")  # fmt: skip
    print("| server | clients | requests | req/s | TTFT p50 (s) | TTFT p99 (s) | tokens/s | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, lv in rows:
        tps = lv.completion_tokens / lv.wall_s if lv.wall_s else 0.0
        mark = "" if lv.tokens_from_usage else "*"
        print(f"| {name} | {lv.concurrency} | {lv.done} | {lv.done / lv.wall_s:.2f} | "
              f"{percentile(lv.ttft_s, 50):.2f} | {percentile(lv.ttft_s, 99):.2f} | {tps:.1f}{mark} | "
              f"{lv.failed} |")  # fmt: skip
    if any(not lv.tokens_from_usage for _, lv in rows):
        print("* no usage in that server's stream: tokens counted as content chunks (one per token)")
    for failure in failures:
        print(failure)
    if python is None and not args.no_peer:
        where = args.peer_python or sys.executable
        print(f"peer not measured: llama-cpp-python's server is not importable by {where} "
              "(pip install 'llama-cpp-python[server]', or pass --peer-python)")  # fmt: skip


if __name__ == "__main__":
    main()
