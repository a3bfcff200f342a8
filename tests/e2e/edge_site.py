"""What the edge-site end-to-end tests start, as an operator would: a site's Mosquitto, node-group model servers
and edge agents as processes of their own (``edgeloop model-server``, ``edgeloop-edge --site S``), configured by
their environment variables, beside a cloud of in-test services (:class:`edgeloop.system.System`) on Kafka,
PostgreSQL and the cloud's Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import free_port

BIN = Path(sys.executable).parent


def _wait_ready(url: str, process: subprocess.Popen[bytes], what: str, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}:\n{_tail(log)}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s ({last}):\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


@dataclass
class ServiceProcess:
    """One EdgeLoop command run as its own process, its output in ``log``."""

    what: str
    argv: list[str]
    env: Mapping[str, str]
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, *, wait: bool = True) -> ServiceProcess:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self.argv, env={**os.environ, **self.env}, stdout=output, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        assert self.process is not None
        _wait_ready(self.url, self.process, self.what, self.log, timeout_s)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a power cut, an OOM kill)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=10.0)
        response.raise_for_status()
        return response.json()

    def output(self) -> str:
        return _tail(self.log, 60)


def node_group_model_server(model_base: Path, model_name: str, logs: Path, group: str) -> ServiceProcess:
    """The lite model server standing in for a node group's TF Serving pod: latest version of ``model_base``."""
    port = free_port()
    return ServiceProcess(
        f"model server of node group {group}",
        [str(BIN / "edgeloop"), "model-server"],
        {
            "EDGELOOP_MODEL_SERVER_MODEL_BASE_PATH": str(model_base),
            "EDGELOOP_MODEL_SERVER_MODEL_NAME": model_name,
            "EDGELOOP_MODEL_SERVER_HTTP_HOST": "127.0.0.1",
            "EDGELOOP_MODEL_SERVER_HTTP_PORT": str(port),
            "EDGELOOP_MODEL_SERVER_GRPC_HOST": "127.0.0.1",
            "EDGELOOP_MODEL_SERVER_GRPC_PORT": str(free_port()),
            "EDGELOOP_MODEL_SERVER_POLL_INTERVAL_S": "0.3",
            "EDGELOOP_MODEL_SERVER_INFERENCE_THREADS": "1",
            "EDGELOOP_LOG_LEVEL": "WARNING",
        },
        f"http://127.0.0.1:{port}",
        logs / f"model-server-{group}.log",
    )


def edge_agent(
    site: str,
    *,
    broker: tuple[str, int],
    model_name: str,
    model_server_url: str,
    data_dir: Path,
    logs: Path,
    port: int | None = None,
    **settings: Any,
) -> ServiceProcess:
    """``edgeloop-edge --site SITE`` configured by its EDGELOOP_EDGE_* variables (``settings``)."""
    port = port or free_port()
    env = {
        "EDGELOOP_MODE": "standalone",
        "EDGELOOP_DATA_DIR": str(data_dir),
        "EDGELOOP_LOG_LEVEL": "INFO",
        "EDGELOOP_EDGE_HTTP_PORT": str(port),
        "EDGELOOP_EDGE_MQTT_HOST": broker[0],
        "EDGELOOP_EDGE_MQTT_PORT": str(broker[1]),
        "EDGELOOP_EDGE_MODEL_NAME": model_name,
        "EDGELOOP_EDGE_MODEL_SERVER_URL": model_server_url,
        "EDGELOOP_EDGE_METADATA_REFRESH_S": "0.3",
        "EDGELOOP_EDGE_UPLINK_RETRY_MAX_S": "1",
    }
    env |= {f"EDGELOOP_EDGE_{name.upper()}": str(value) for name, value in settings.items()}
    return ServiceProcess(
        f"edge agent of {site}",
        [str(BIN / "edgeloop-edge"), "--site", site],
        env,
        f"http://127.0.0.1:{port}",
        logs / f"edge-{site}.log",
    )
