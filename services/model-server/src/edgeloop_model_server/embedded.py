"""Run the model server inside another process, on a thread of its own (tests, benchmarks, standalone mode).

``with serve_in_thread(settings) as server:`` returns once the initial versions
are loaded and both ports accept connections; leaving the block stops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from edgeloop_model_server.app import create_app
from edgeloop_model_server.settings import Settings


@dataclass(frozen=True)
class RunningServer:
    rest_url: str  # e.g. http://127.0.0.1:8501
    grpc_target: str  # e.g. 127.0.0.1:8500
    settings: Settings


@contextmanager
def serve_in_thread(settings: Settings, *, startup_timeout_s: float = 120.0) -> Iterator[RunningServer]:
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="model-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the model server stopped during start-up; see the log above for the reason")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the model server did not start within {startup_timeout_s} s")
        time.sleep(0.05)
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "") else settings.http_host
    grpc_host = "127.0.0.1" if settings.grpc_host in ("0.0.0.0", "") else settings.grpc_host
    try:
        yield RunningServer(f"http://{host}:{settings.http_port}", f"{grpc_host}:{app.state.grpc_port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
