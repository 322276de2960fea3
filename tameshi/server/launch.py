"""Running the app under uvicorn: in the foreground for `tameshi serve`, or on a background thread
(tests, benchmarks) on a port the OS picks, so that nothing depends on a fixed port being free."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

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


def serve_forever(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    uvicorn.Server(_config(app, host, port, log_level)).run()


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
