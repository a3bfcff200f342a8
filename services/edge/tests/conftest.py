"""Fixtures of the edge agent's tests: the real lite model server standing in for a node group's TF Serving pod,
and agents started in-process against the real Mosquitto."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from edge_helpers import AgentFactory, RunningAgent
from edgeloop_common.settings import CommonSettings
from edgeloop_edge.app import create_app
from edgeloop_edge.settings import Settings
from edgeloop_model_server.embedded import RunningServer, serve_in_thread

from tests.model_fixtures import lite_server_settings


@pytest.fixture(scope="module")
def node_group_server(trained_model_base: Path, trained_model_name: str) -> Iterator[RunningServer]:
    """The node group's model server: the lite server on the cached test model (version 1)."""
    with serve_in_thread(lite_server_settings(trained_model_base, trained_model_name)) as server:
        yield server


@pytest.fixture
def site() -> str:
    return f"site-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_agent(
    mqtt_broker: tuple[str, int],
    node_group_server: RunningServer,
    trained_model_name: str,
    tmp_path: Path,
    site: str,
) -> AgentFactory:
    """``async with start_agent(**settings) as agent``: the site's agent, its lifespan run, on the shared broker."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningAgent]:
        values: dict[str, Any] = {
            "site": site,
            "mqtt_client_id": f"edge-{site}",
            "mqtt_session_expiry_s": 120,  # the shared broker forgets this test's session soon after
            "model_name": trained_model_name,
            "model_server_url": node_group_server.rest_url,
            "uplink_retry_max_s": 0.5,
            "common": CommonSettings(
                mode="standalone", mqtt_host=mqtt_broker[0], mqtt_port=mqtt_broker[1], data_dir=tmp_path / "data"
            ),
        }
        values.update(overrides)
        settings = Settings(**values)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            agent = RunningAgent(app, settings)
            try:
                yield agent
            finally:
                await agent.http.aclose()

    return start
