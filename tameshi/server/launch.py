"""Running the app under uvicorn: for `tameshi serve` beside the engine, which keeps the main thread,
or on a background thread (tests, benchmarks) on a port the OS picks, so that nothing depends on a
fixed port being free."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from tameshi.errors import TameshiError

if TYPE_CHECKING:
    from tameshi.engine.async_engine import AsyncEngine

# Header bytes per request; uvicorn's default is 16 KiB already, stated here so that it is a decision.
MAX_HEADER_BYTES = 16 * 1024
# Seconds open requests get to finish after Ctrl-C / SIGTERM; then the engine stops and fails the rest
# (503, or an error event and [DONE]). uvicorn's own window is longer, since past it uvicorn cancels
# them: a bare 500, a cut stream and a traceback each.
DRAIN_S = 5.0
# The engine sees the stop only after the step in flight, which took up to 3 s on a loaded 2-core CPU;
# the wait costs nothing unless a connection is stuck, as uvicorn ends once the last one closes.
_GRACE_AFTER_DRAIN_S = 5.0


def _config(app: FastAPI, host: str, port: int, log_level: str, drain_s: float = DRAIN_S) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=drain_s + _GRACE_AFTER_DRAIN_S,  # type: ignore[arg-type]
    )


def serve_forever(
    app: FastAPI, engine: AsyncEngine, host: str, port: int, log_level: str = "info", drain_s: float = DRAIN_S
) -> None:
    """uvicorn on a thread of its own, the engine on this one (AsyncEngine.run_here says why).

    Ctrl-C or SIGTERM stops gracefully: uvicorn takes no new requests and gives open ones `drain_s`
    to finish while the engine keeps stepping them; then the engine stops, failing what still runs
    as a second Ctrl-C does at once. A server that cannot listen is one TameshiError."""
    server = uvicorn.Server(_config(app, host, port, log_level, drain_s))
    deadline = threading.Timer(drain_s, engine.stop)
    deadline.daemon = True

    def http() -> None:
        try:
            server.run()  # off the main thread uvicorn installs no signal handlers: ours below stay
        except SystemExit:  # uvicorn's way out when it cannot listen: reported below, once
            pass
        finally:
            engine.stop()  # ends run_here below, once uvicorn has drained or failed

    def drain(signum: int, frame: object) -> None:
        if server.should_exit:
            raise KeyboardInterrupt  # asked twice: now
        server.should_exit = True
        deadline.start()

    thread = threading.Thread(target=http, name="tameshi-http", daemon=True)
    previous = {sig: signal.signal(sig, drain) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        engine.run_here(on_ready=thread.start)
    except KeyboardInterrupt:
        pass
    finally:
        deadline.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.should_exit = True
        thread.join(timeout=30)
    if not server.started:
        raise TameshiError(f"the HTTP server stopped without serving on {host}:{port} (see the log above)")


@dataclass
class RunningServer:
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    url: str  # e.g. http://127.0.0.1:53817

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> RunningServer:
    """Serve `app` on a daemon thread; port 0 lets the OS pick a free one. Returns once it listens."""
    server = uvicorn.Server(_config(app, host, port, log_level))
    thread = threading.Thread(target=server.run, name="tameshi-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    return RunningServer(app, server, thread, f"http://{bound[0]}:{bound[1]}")
