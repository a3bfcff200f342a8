"""Fixtures for the model server's tests: servers started in-process on free ports, clients as TF Serving's docs show.

The tests talk to the server only through TF Serving's documented REST and
gRPC APIs (plain HTTP JSON and the official ``tensorflow-serving-api`` stubs),
so the same assertions hold against the real ``tensorflow/serving``.
Needs the ``trained_model_base`` fixture (``tests/model_fixtures.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from edgeloop_model_server.embedded import RunningServer, serve_in_thread
from model_server_helpers import ServerFactory, server_settings


@pytest.fixture(scope="module")
def model_server(trained_model_base: Path, trained_model_name: str) -> Iterator[RunningServer]:
    """A server on the cached model (read-only): for tests that only send requests."""
    with serve_in_thread(server_settings(trained_model_base, trained_model_name)) as server:
        yield server


@pytest.fixture
def start_model_server() -> ServerFactory:
    """``with start_model_server(model_base, name, **settings) as server:`` for tests that change versions."""

    def start(model_base: Path, model_name: str, **overrides: Any) -> AbstractContextManager[RunningServer]:
        return serve_in_thread(server_settings(model_base, model_name, **overrides))

    return start


@pytest.fixture
def rest(model_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=model_server.rest_url, timeout=30) as client:
        yield client


@pytest.fixture
def grpc_channel(model_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(model_server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="session")
def capture_images(catdog_captures_dir: Path) -> list[Path]:
    images = sorted(catdog_captures_dir.glob("*.jpg"))
    assert images, f"no captures in {catdog_captures_dir}"
    return images
