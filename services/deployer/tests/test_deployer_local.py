"""The ``local`` target (standalone mode) against the real lite model server serving a real (tiny) model."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from deployer_testing import eventually, final_update, phases, promotion, standalone_settings
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_deployer.app import create_app
from edgeloop_model_server.embedded import RunningServer, serve_in_thread
from edgeloop_model_server.settings import Settings as ModelServerSettings

from tests.helpers import free_port
from tests.model_fixtures import copy_model_base

pytestmark = [pytest.mark.tf, pytest.mark.slow]


@pytest.fixture
def model_base(trained_model_base: Path, tmp_path: Path) -> Path:
    return copy_model_base(trained_model_base, tmp_path)


@pytest.fixture
def model_server(model_base: Path, trained_model_name: str) -> Iterator[RunningServer]:
    settings = ModelServerSettings(
        http_host="127.0.0.1",
        http_port=free_port(),
        grpc_host="127.0.0.1",
        grpc_port=free_port(),
        model_name=trained_model_name,
        model_base_path=model_base,
        model_version_policy="all",  # standalone: every exported version is served; the gateway picks
        poll_interval_s=0.2,
        inference_threads=1,
        warmup=False,
    )
    with serve_in_thread(settings) as server:
        yield server


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    events = InProcessBus(source="registry")
    await events.start()
    yield events
    await events.stop()


async def test_the_local_target_reports_ready_once_the_version_is_available_and_failed_when_it_never_is(
    model_server: RunningServer, model_base: Path, trained_model_name: str, tmp_path: Path, bus: InProcessBus
) -> None:
    data_dir = tmp_path / "data"
    patient = standalone_settings(data_dir, model_server_url=model_server.rest_url, rollout_timeout_s=60)
    app = create_app(patient, bus=bus)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://deployer") as http:
            ready = await http.get("/readyz")
        await bus.publish(promotion(1, model=trained_model_name, group="site-a"))
        await eventually(lambda: final_update(bus, "site-a") is not None, what="version 1 ready")
        # Version 2 is promoted before its export reaches the model server's folder: the deployer waits for it.
        await bus.publish(promotion(2, model=trained_model_name, group="site-a"))
        await eventually(lambda: len(phases(bus, "site-a")) == 5, what="version 2 progressing")
        shutil.copytree(model_base / trained_model_name / "1", model_base / trained_model_name / "2")
        await eventually(lambda: phases(bus, "site-a")[-1][0] == "ready", what="version 2 ready")

    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["local"] == "ok"
    assert phases(bus, "site-a") == [
        ("pending", 1, None),
        ("progressing", 1, None),
        ("ready", 1, 1),
        ("pending", 2, 1),
        ("progressing", 2, 1),
        ("ready", 2, 2),
    ]
    last = final_update(bus, "site-a")
    assert last is not None and last.reason == "version 2 AVAILABLE on the local model server"

    # A restarted deployer with a short timeout: version 9 never appears; version 2 keeps serving.
    hasty = standalone_settings(data_dir, model_server_url=model_server.rest_url, rollout_timeout_s=1.5)
    app = create_app(hasty, bus=bus)
    async with app.router.lifespan_context(app):
        await bus.publish(promotion(9, model=trained_model_name, group="site-a"))
        await eventually(lambda: phases(bus, "site-a")[-1][0] == "failed", what="version 9 failed")

    failed = final_update(bus, "site-a")
    assert failed is not None and (failed.desired_version, failed.actual_version) == (9, 2)
    assert failed.reason.startswith("version 9 did not become ready: not ready within the rollout timeout of 1.5 s")
    assert "does not serve it yet" in failed.reason
    assert failed.reason.endswith("; version 2 keeps serving")


async def test_the_local_target_is_not_ready_without_a_model_server(tmp_path: Path, bus: InProcessBus) -> None:
    settings = standalone_settings(tmp_path, model_server_url=f"http://127.0.0.1:{free_port()}")
    app = create_app(settings, bus=bus)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://d") as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["local"] == "not ready"
