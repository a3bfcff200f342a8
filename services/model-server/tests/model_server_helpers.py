"""Helpers for the model server's tests: server settings on free ports, publishing versions like a trainer, waiting."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from edgeloop_model_server.embedded import RunningServer
from edgeloop_model_server.settings import Settings

from tests.helpers import free_port

ServerFactory = Callable[..., AbstractContextManager[RunningServer]]


def add_version(model_dir: Path, version: int, source: Path, *, without: tuple[str, ...] = ()) -> Path:
    """Publish a version the way a trainer does: copy to a hidden folder, then rename it into place."""
    staging = model_dir / f".incoming-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*without) if without else None)
    final = model_dir / str(version)
    os.rename(staging, final)
    return final


def wait_for(condition: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def server_settings(model_base: Path, model_name: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "http_host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_host": "127.0.0.1",
        "grpc_port": free_port(),
        "model_name": model_name,
        "model_base_path": model_base,
        "poll_interval_s": 0.3,
        "inference_threads": 2,
    }
    values.update(overrides)
    return Settings(**values)
