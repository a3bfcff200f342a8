"""Helpers of the federated tests: site histories, a site client process, a recording TCP proxy, a served app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import uvicorn
from edgeloop.sensors import fill_history
from edgeloop_common.telemetry.history import SiteHistory
from fastapi import FastAPI

from tests.helpers import free_port

SITES = (("site-a", "temperate", 1), ("site-b", "hot", 2), ("site-c", "cold", 3))


def fill_sites(folder: Path, *, devices: int = 8, readings: int = 1500) -> dict[str, Path]:
    """One SiteHistory per site of SITES (different profiles: the sites are not identically distributed)."""
    paths = {}
    for site, profile, seed in SITES:
        path = folder / f"{site}.db"
        history = SiteHistory(path)
        fill_history(history, site, devices, readings, seed=seed, profile=profile)
        history.close()
        paths[site] = path
    return paths


def start_client(site: str, history: Path, server: str, log: Path) -> subprocess.Popen[bytes]:
    """``edgeloop federated client`` as its own process, as a site would run it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "edgeloop.main", "federated", "client"]
    command += ["--site", site, "--history", str(history), "--server", server, "--once", "--connect-timeout-s", "300"]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class RecordingProxy:
    """A TCP proxy on a free local port to ``upstream``; keeps every byte that crossed, per direction."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.to_server = bytearray()
        self.to_client = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                downstream.close()  # no server yet: the client dials again
                continue
            upstream.settimeout(None)
            for source, target, sink in (
                (downstream, upstream, self.to_server),
                (upstream, downstream, self.to_client),
            ):
                threading.Thread(target=self._pump, args=(source, target, sink), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, sink: bytearray) -> None:
        try:
            while chunk := source.recv(65536):
                with self._lock:
                    sink.extend(chunk)
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        self._thread.join(timeout=5)


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
