"""The ``local`` target (standalone mode) against the real lite model server serving a real (tiny) model."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from deployer_testing import eventually, final_update, phases, promotion, standalone_settings, updates
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


# --- one model server per node group ---------------------------------------------------------------------------


def group_server_settings(models_root: Path, group: str, model: str) -> ModelServerSettings:
    return ModelServerSettings(
        http_host="127.0.0.1",
        http_port=free_port(),
        grpc_host="127.0.0.1",
        grpc_port=free_port(),
        model_name=model,
        model_base_path=models_root / group,  # the deployer links versions into <root>/<group>/<model>/
        model_version_policy="latest:1",  # an edge site serves one version: the newest linked
        poll_interval_s=0.2,
        inference_threads=1,
        warmup=False,
    )


async def served(http: httpx.AsyncClient, server: RunningServer, model: str) -> tuple[str, dict[str, str]]:
    """(the version a request without a version reaches, state of every version the server has handled)."""
    metadata = await http.get(f"{server.rest_url}/v1/models/{model}/metadata")
    status = await http.get(f"{server.rest_url}/v1/models/{model}")
    latest = metadata.json()["model_spec"]["version"] if metadata.status_code == 200 else "none"
    states = {s["version"]: s["state"] for s in status.json().get("model_version_status", [])}
    return latest, states


def linked(models_root: Path, group: str, model: str) -> dict[str, str]:
    """What is in the group's model folder: version -> where its symlink points (or "not a link")."""
    folder = models_root / group / model
    if not folder.is_dir():
        return {}
    return {e.name: str(e.resolve()) if e.is_symlink() else "not a link" for e in sorted(folder.iterdir())}


async def test_a_server_per_node_group_serves_what_was_rolled_out_to_that_group_only_and_rolls_back(
    model_base: Path, trained_model_name: str, tmp_path: Path, bus: InProcessBus
) -> None:
    model = trained_model_name
    shutil.copytree(model_base / model / "1", model_base / model / "2")  # the trainer exported version 2
    models_root = tmp_path / "node-groups"
    with (
        serve_in_thread(group_server_settings(models_root, "site-a", model)) as site_a,
        serve_in_thread(group_server_settings(models_root, "site-b", model)) as site_b,
    ):
        settings = standalone_settings(
            tmp_path / "data",
            local_node_group_servers=f"site-a={site_a.rest_url},site-b={site_b.rest_url}",
            local_models_root=models_root,
            local_model_base=model_base,
            rollout_timeout_s=60,
        )
        app = create_app(settings, bus=bus)
        deployer = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://deployer")
        async with app.router.lifespan_context(app), deployer, httpx.AsyncClient(timeout=10) as http:
            ready = await deployer.get("/readyz")
            await bus.publish(promotion(1, model=model))  # to every group
            await eventually(
                lambda: all(final_update(bus, group) is not None for group in ("site-a", "site-b")),
                what="version 1 ready in both groups",
            )
            both_on_1 = (await served(http, site_a, model), await served(http, site_b, model))

            await bus.publish(promotion(2, model=model, group="site-a"))
            await eventually(lambda: phases(bus, "site-a")[-1] == ("ready", 2, 2), what="version 2 ready in site-a")
            after_promotion = (await served(http, site_a, model), await served(http, site_b, model))
            links_after_promotion = (linked(models_root, "site-a", model), linked(models_root, "site-b", model))
            listing = (await deployer.get("/v1/deployments")).json()["deployments"]

            rollback = await deployer.post(f"/v1/deployments/{model}/site-a/rollback", json={"reason": "v2 is worse"})
            await eventually(lambda: phases(bus, "site-a")[-1] == ("ready", 1, 1), what="site-a back on version 1")
            after_rollback = await served(http, site_a, model)
            links_after_rollback = linked(models_root, "site-a", model)

            # A version the trainer never exported is refused; site-b is rolled back to (keeps) version 1.
            await bus.publish(promotion(9, model=model, group="site-b"))
            await eventually(lambda: phases(bus, "site-b")[-1][0] == "rolled_back", what="version 9 rolled back")
            refused = final_update(bus, "site-b")
            after_refusal = await served(http, site_b, model)

            deleted = await deployer.delete(f"/v1/deployments/{model}/site-b")
            await eventually(
                lambda: not linked(models_root, "site-b", model), what="site-b's folder emptied by the deletion"
            )

    assert ready.status_code == 200, ready.text
    assert both_on_1 == (("1", {"1": "AVAILABLE"}), ("1", {"1": "AVAILABLE"}))
    # Version 2 went to site-a only: site-a's server answers with 2 (and lets 1 go), site-b's never saw 2.
    (site_a_latest, site_a_states), site_b_now = after_promotion
    assert (site_a_latest, site_a_states["2"]) == ("2", "AVAILABLE")
    assert site_b_now == ("1", {"1": "AVAILABLE"})
    trained = {v: str((model_base / model / v).resolve()) for v in ("1", "2")}
    assert links_after_promotion == (trained, {"1": trained["1"]})
    assert {(d["node_group"], d["actual_version"], d["endpoint"]) for d in listing} == {
        ("site-a", 2, site_a.rest_url),
        ("site-b", 1, site_b.rest_url),
    }
    # The rollback unlinked version 2: site-a's server went back to version 1.
    assert rollback.status_code == 202, rollback.text
    assert after_rollback == ("1", {"1": "AVAILABLE", "2": "END"})
    assert links_after_rollback == {"1": trained["1"]}

    assert phases(bus, "site-a") == [
        ("pending", 1, None),
        ("progressing", 1, None),
        ("ready", 1, 1),
        ("pending", 2, 1),
        ("progressing", 2, 1),
        ("ready", 2, 2),
        ("pending", 1, 2),
        ("progressing", 1, 2),
        ("ready", 1, 1),
    ]
    # Every update names the group's own model server, where its edge agent asks for actual_version.
    assert {e.endpoint for e in updates(bus, group="site-a")} == {site_a.rest_url}
    assert {e.endpoint for e in updates(bus, group="site-b")} == {site_b.rest_url}
    assert final_update(bus, "site-a").reason == "version 1 AVAILABLE on the model server of site-a"  # type: ignore[union-attr]

    assert refused is not None and (refused.desired_version, refused.actual_version) == (9, 1)
    assert "the local target refused it: version 9 of catdog is not in the model base" in refused.reason
    assert refused.reason.endswith("; rolled back to version 1")
    assert after_refusal == ("1", {"1": "AVAILABLE"})
    assert deleted.status_code == 200 and deleted.json()["phase"] == "deleted"
