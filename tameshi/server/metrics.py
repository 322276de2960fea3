"""Server counters and the Prometheus text exposition of them and of the engine's stats (GET /metrics).

Written by hand rather than with prometheus_client: a dozen series do not justify a dependency.
Counters are touched only from the event loop's thread, so they need no lock.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    requests: Counter = field(default_factory=Counter)  # (route, HTTP status) -> count
    prompt_tokens: int = 0
    generation_tokens: int = 0
    aborted: int = 0  # choices stopped before they finished (client gone, request cancelled)
    running: int = 0  # choices (engine requests) in flight
    ttft_counts: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS) + 1))
    ttft_sum: float = 0.0

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_counts[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
        self.ttft_sum += seconds

    def render(self, engine_stats: Any, engine_alive: bool, model: str) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP tameshi_{name} {help_text}")
            lines.append(f"# TYPE tameshi_{name} {kind}")
            lines.extend(f"tameshi_{name}{labels} {_number(value)}" for labels, value in samples)

        m = f'model="{_escape(model)}"'
        metric("requests_total", "counter", "HTTP requests by route and status.", [
            (f'{{route="{_escape(route)}",code="{status}"}}', n)
            for (route, status), n in sorted(self.requests.items())
        ])  # fmt: skip
        metric(
            "prompt_tokens_total", "counter", "Prompt tokens admitted.", [(f"{{{m}}}", self.prompt_tokens)]
        )
        metric(
            "generation_tokens_total", "counter", "Tokens generated.", [(f"{{{m}}}", self.generation_tokens)]
        )
        metric("requests_aborted_total", "counter", "Choices aborted before they finished.", [
            (f"{{{m}}}", self.aborted)
        ])  # fmt: skip
        metric("requests_in_flight", "gauge", "Engine requests the server is waiting on.", [
            (f"{{{m}}}", self.running)
        ])  # fmt: skip
        cumulative, buckets = 0, []
        for bound, count in zip((*TTFT_BUCKETS, float("inf")), self.ttft_counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            buckets.append((f'_bucket{{{m},le="{le}"}}', cumulative))
        lines.append("# HELP tameshi_time_to_first_token_seconds Time from request to first token.")
        lines.append("# TYPE tameshi_time_to_first_token_seconds histogram")
        lines.extend(f"tameshi_time_to_first_token_seconds{labels} {value}" for labels, value in buckets)
        lines.append(f"tameshi_time_to_first_token_seconds_sum{{{m}}} {_number(self.ttft_sum)}")
        lines.append(f"tameshi_time_to_first_token_seconds_count{{{m}}} {cumulative}")

        s = engine_stats
        metric("engine_alive", "gauge", "1 while the engine loop runs.", [(f"{{{m}}}", int(engine_alive))])
        metric("num_requests_running", "gauge", "Sequences the engine is running.", [(f"{{{m}}}", s.running)])
        metric("num_requests_waiting", "gauge", "Sequences queued in the engine.", [(f"{{{m}}}", s.waiting)])
        metric("kv_blocks_used", "gauge", "KV cache blocks in use.", [(f"{{{m}}}", s.kv_blocks_used)])
        metric("kv_blocks_total", "gauge", "KV cache blocks in the pool.", [(f"{{{m}}}", s.kv_blocks_total)])
        usage = s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0
        metric("kv_cache_usage_ratio", "gauge", "Fraction of KV blocks in use.", [(f"{{{m}}}", usage)])
        metric("prefix_cache_hit_rate", "gauge", "Prompt tokens served from the prefix cache.", [
            (f"{{{m}}}", s.prefix_cache_hit_rate)
        ])  # fmt: skip
        metric("preemptions_total", "counter", "Sequences preempted.", [(f"{{{m}}}", s.preemptions)])
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RequestCounter:
    """ASGI middleware counting requests by route and response status.

    The route is matched here, against the app's own routes, rather than read from what the router
    leaves in the scope: a middleware that copies the scope (JSONBodyMiddleware) hides that, and one
    that answers first (the API key, the body limit) never reaches the router. Raw paths would let a
    client grow the table without bound, so what matches no route is "unmatched"."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.requests[(self._route(scope), status or 499)] += 1

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            # PARTIAL: the path matched but not the method (405), still that route's request
            if route.matches(scope)[0] is not Match.NONE:
                return getattr(route, "path", "unmatched")
        return "unmatched"
