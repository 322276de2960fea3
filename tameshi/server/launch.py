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


def _config(app: FastAPI, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=5,  # streams still open at Ctrl-C are cut after this
    )


def serve_forever(app: FastAPI, engine: AsyncEngine, host: str, port: int, log_level: str = "info") -> None:
    """uvicorn on a thread of its own, the engine on this one (AsyncEngine.run_here says why).

    Ctrl-C or SIGTERM stops gracefully: uvicorn takes no new requests and gives open ones up to
    `timeout_graceful_shutdown` to finish while the engine keeps stepping them; then the engine
    stops. A second Ctrl-C stops at once. A server that cannot listen is one TameshiError."""
    server = uvicorn.Server(_config(app, host, port, log_level))

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

    thread = threading.Thread(target=http, name="tameshi-http", daemon=True)
    previous = {sig: signal.signal(sig, drain) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        engine.run_here(on_ready=thread.start)
    except KeyboardInterrupt:
        pass
    finally:
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
