"""The rollout logic with a scripted target and the real SQLite store: what a user of the events and the API sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from deployer_testing import ScriptedTarget, eventually, final_update, phases, promotion, standalone_settings, updates
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import DeadLetter
from edgeloop_deployer.adapters.store import SqlDeploymentStore, create_sql_engine
from edgeloop_deployer.app import create_app
from edgeloop_deployer.service import RolloutConfig, RolloutService, UnknownNodeGroupError
from fastapi import FastAPI

GROUPS = ("site-a", "site-b")


def make_service(db: Path, bus: InProcessBus, target: ScriptedTarget, *, timeout_s: float = 1.0) -> RolloutService:
    store = SqlDeploymentStore(create_sql_engine(f"sqlite:///{db}"))
    config = RolloutConfig(node_groups=GROUPS, rollout_timeout_s=timeout_s, poll_interval_s=0.01)
    return RolloutService(target=target, store=store, publish=bus.publish, config=config)


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    events = InProcessBus(source="test")
    await events.start()
    yield events
    await events.stop()


async def test_a_promotion_without_a_group_goes_to_every_group_and_ends_ready(
    tmp_path: Path, bus: InProcessBus
) -> None:
    target = ScriptedTarget()
    service = make_service(tmp_path / "d.sqlite3", bus, target)

    started = await service.on_promotion(promotion(1))
    await service.wait_idle()

    assert sorted(record.node_group for record in started) == ["site-a", "site-b"]
    for group in GROUPS:
        assert phases(bus, group) == [("pending", 1, None), ("progressing", 1, None), ("ready", 1, 1)]
        # Every update says where that group's model server answers (the edge agent of the site asks it).
        assert {event.endpoint for event in updates(bus, group=group)} == {f"http://{group}.scripted.test:8501"}
    states = {state.node_group: state for state in await service.states()}
    assert {group: (s.actual_version, s.phase) for group, s in states.items()} == {
        "site-a": (1, "ready"),
        "site-b": (1, "ready"),
    }


async def test_a_promotion_of_another_alias_is_not_rolled_out(tmp_path: Path, bus: InProcessBus) -> None:
    target = ScriptedTarget()
    service = make_service(tmp_path / "d.sqlite3", bus, target)

    assert await service.on_promotion(promotion(1, alias="candidate")) == []
    assert target.applied == [] and updates(bus) == []


async def test_a_version_that_never_becomes_ready_is_rolled_back_with_the_reason(
    tmp_path: Path, bus: InProcessBus
) -> None:
    target = ScriptedTarget(outcomes={2: "never"})
    service = make_service(tmp_path / "d.sqlite3", bus, target, timeout_s=0.3)
    await service.deploy("catdog", 1, "site-a", trigger="http")
    await service.wait_idle()

    await service.on_promotion(promotion(2, group="site-a"))
    await service.wait_idle()

    assert target.versions_applied() == [1, 2, 1]
    last = final_update(bus, "site-a")
    assert last is not None and (last.phase, last.desired_version, last.actual_version) == ("rolled_back", 2, 1)
    assert "version 2 did not become ready: not ready within the rollout timeout of 0.3 s" in last.reason
    assert last.reason.endswith("rolled back to version 1")
    state, rollouts = await service.describe("catdog", "site-a")
    assert (state.actual_version, state.previous_version, state.phase) == (1, None, "rolled_back")
    assert [(r.version, r.phase) for r in rollouts] == [(2, "rolled_back"), (1, "ready")]


async def test_a_first_version_that_fails_has_nothing_to_roll_back_to(tmp_path: Path, bus: InProcessBus) -> None:
    target = ScriptedTarget(outcomes={1: "failed"})
    service = make_service(tmp_path / "d.sqlite3", bus, target)

    await service.deploy("catdog", 1, "site-b", trigger="http")
    await service.wait_idle()

    last = final_update(bus, "site-b")
    assert last is not None and (last.phase, last.actual_version) == ("failed", None)
    assert last.reason == (
        "version 1 did not become ready: ProgressDeadlineExceeded (scripted); no previous version to roll back to"
    )


async def test_a_refused_apply_rolls_back_and_says_the_target_refused(tmp_path: Path, bus: InProcessBus) -> None:
    target = ScriptedTarget(outcomes={3: "refused"})
    service = make_service(tmp_path / "d.sqlite3", bus, target)
    await service.deploy("catdog", 2, "site-a", trigger="http")
    await service.wait_idle()

    await service.deploy("catdog", 3, "site-a", trigger="http")
    await service.wait_idle()

    last = final_update(bus, "site-a")
    assert last is not None and (last.phase, last.actual_version) == ("rolled_back", 2)
    assert "the scripted target refused it: version 3 refused by the scripted target" in last.reason


async def test_a_newer_version_supersedes_the_rollout_in_flight(tmp_path: Path, bus: InProcessBus) -> None:
    target = ScriptedTarget(outcomes={2: "never"})
    service = make_service(tmp_path / "d.sqlite3", bus, target, timeout_s=30)
    await service.deploy("catdog", 1, "site-a", trigger="http")
    await service.wait_idle()
    await service.deploy("catdog", 2, "site-a", trigger="http")
    await eventually(lambda: len(target.applied) == 2, what="version 2 applied")

    await service.deploy("catdog", 3, "site-a", trigger="http")
    await service.wait_idle(timeout_s=5)

    state, rollouts = await service.describe("catdog", "site-a")
    assert (state.actual_version, state.previous_version, state.phase) == (3, 1, "ready")
    assert [(r.version, r.phase, r.detail) for r in rollouts][:2] == [
        (3, "ready", "version 3 ready"),
        (2, "superseded", "superseded by version 3"),
    ]


async def test_a_restarted_deployer_knows_the_previous_version_to_roll_back_to(
    tmp_path: Path, bus: InProcessBus
) -> None:
    db = tmp_path / "deployer.sqlite3"
    first = make_service(db, bus, ScriptedTarget())
    for version in (4, 5):
        await first.deploy("catdog", version, "site-a", trigger="http")
        await first.wait_idle()
    await first.close()

    target = ScriptedTarget()
    restarted = make_service(db, bus, target)
    await restarted.rollback("catdog", "site-a", reason="operator: v5 misclassifies dogs")
    await restarted.wait_idle()

    assert target.versions_applied() == [4]
    state, _ = await restarted.describe("catdog", "site-a")
    assert (state.actual_version, state.previous_version) == (4, 5)
    last = final_update(bus, "site-a")
    assert last is not None and (last.phase, last.actual_version) == ("ready", 4)


async def test_a_rollout_unfinished_at_shutdown_is_resumed_on_start(tmp_path: Path, bus: InProcessBus) -> None:
    db = tmp_path / "deployer.sqlite3"
    stopped = make_service(db, bus, ScriptedTarget(outcomes={7: "never"}), timeout_s=60)
    await stopped.deploy("catdog", 7, "site-b", trigger="http")
    await eventually(lambda: any(e.phase == "progressing" for e in updates(bus)), what="progressing")
    await stopped.close()

    target = ScriptedTarget()
    resumed = await make_service(db, bus, target).resume_unfinished()

    assert [(r.version, r.trigger) for r in resumed] == [(7, "resume")]
    await eventually(lambda: final_update(bus, "site-b") is not None, what="the resumed rollout to finish")
    assert target.versions_applied("site-b") == [7]


async def test_an_unknown_group_is_refused(tmp_path: Path, bus: InProcessBus) -> None:
    service = make_service(tmp_path / "d.sqlite3", bus, ScriptedTarget())
    with pytest.raises(UnknownNodeGroupError, match="unknown node group 'site-z'; configured: site-a, site-b"):
        await service.deploy("catdog", 1, "site-z", trigger="http")


async def test_a_target_without_rollback_reports_failed_and_the_old_version_serving(
    tmp_path: Path, bus: InProcessBus
) -> None:
    target = ScriptedTarget(outcomes={2: "never"}, rolls_back=False)
    service = make_service(tmp_path / "d.sqlite3", bus, target, timeout_s=0.2)
    await service.deploy("catdog", 1, "site-a", trigger="http")
    await service.wait_idle()
    await service.deploy("catdog", 2, "site-a", trigger="http")
    await service.wait_idle()

    last = final_update(bus, "site-a")
    assert last is not None and (last.phase, last.desired_version, last.actual_version) == ("failed", 2, 1)
    assert last.reason.endswith("; version 1 keeps serving")
    assert target.versions_applied() == [1, 2]


# --- through the app: HTTP API and the bus -------------------------------------------------------------------


@pytest.fixture
async def app_and_target(tmp_path: Path, bus: InProcessBus) -> AsyncIterator[tuple[FastAPI, ScriptedTarget]]:
    target = ScriptedTarget(outcomes={9: "never"})
    app = create_app(standalone_settings(tmp_path, rollout_timeout_s=0.5), bus=bus, target=target)
    async with app.router.lifespan_context(app):
        yield app, target


def http(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://deployer")


async def test_http_deploy_answers_202_and_get_shows_the_rollout(
    app_and_target: tuple[FastAPI, ScriptedTarget], bus: InProcessBus
) -> None:
    app, _ = app_and_target
    async with http(app) as client:
        started = await client.post(
            "/v1/deployments", json={"model_name": "catdog", "version": 3, "node_group": "site-b"}
        )
        assert started.status_code == 202, started.text
        assert started.json()["rollout"]["phase"] in ("pending", "progressing")
        await eventually(lambda: final_update(bus, "site-b") is not None, what="the rollout to finish")
        detail = await client.get(started.json()["deployment"])
        listing = await client.get("/v1/deployments")

    assert detail.status_code == 200
    body = detail.json()
    assert (body["actual_version"], body["phase"], body["in_flight"]) == (3, "ready", None)
    assert body["endpoint"] == "http://site-b.scripted.test:8501"
    assert [(r["version"], r["trigger"], r["phase"]) for r in body["rollouts"]] == [(3, "http", "ready")]
    assert [(d["node_group"], d["actual_version"], d["endpoint"]) for d in listing.json()["deployments"]] == [
        ("site-b", 3, "http://site-b.scripted.test:8501")
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("POST", "/v1/deployments", {"model_name": "catdog", "version": 1, "node_group": "site-z"}, 404, "site-z"),
        ("POST", "/v1/deployments", {"model_name": "cat dog", "version": 1, "node_group": "site-a"}, 422, "invalid"),
        ("POST", "/v1/deployments", {"model_name": "catdog", "version": -1, "node_group": "site-a"}, 422, "version"),
        (
            "POST",
            "/v1/deployments",
            {"model_name": "catdog", "version": 1, "node_group": "site-a", "pod_annotations": {"bad key!": "x"}},
            422,
            "not a valid Kubernetes annotation key",
        ),
        ("POST", "/v1/deployments/catdog/site-a/rollback", None, 404, "nothing was ever deployed"),
        ("DELETE", "/v1/deployments/catdog/site-a", None, 404, "nothing is deployed"),
        ("DELETE", "/v1/deployments/cat%20dog/site-a", None, 422, "invalid model name 'cat dog'"),
        ("GET", "/v1/deployments/catdog/site-q", None, 404, "unknown node group"),
    ],
    ids=[
        "unknown-group",
        "bad-model-name",
        "negative-version",
        "bad-annotation",
        "rollback-nothing",
        "delete-nothing",
        "delete-bad-model-name",
        "get-unknown-group",
    ],
)
async def test_bad_requests_get_a_4xx_with_the_reason(
    app_and_target: tuple[FastAPI, ScriptedTarget], method: str, path: str, body: object, status: int, reason: str
) -> None:
    app, target = app_and_target
    async with http(app) as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == status
    assert reason in response.text
    assert target.applied == []


async def test_rollback_without_a_previous_version_is_409_and_delete_then_says_deleted(
    app_and_target: tuple[FastAPI, ScriptedTarget], bus: InProcessBus
) -> None:
    app, target = app_and_target
    async with http(app) as client:
        await client.post("/v1/deployments", json={"model_name": "catdog", "version": 1, "node_group": "site-a"})
        await eventually(lambda: final_update(bus, "site-a") is not None, what="version 1 ready")
        refused = await client.post("/v1/deployments/catdog/site-a/rollback", json={"reason": "try"})
        deleted = await client.delete("/v1/deployments/catdog/site-a")

    assert refused.status_code == 409
    assert refused.json()["detail"] == "catdog in site-a has no previous version to roll back to (serving: 1)"
    assert deleted.status_code == 200
    assert (deleted.json()["phase"], deleted.json()["actual_version"]) == ("deleted", None)
    assert target.deleted == [("catdog", "site-a")]
    last = final_update(bus, "site-a")
    assert last is not None and (last.phase, last.desired_version, last.actual_version) == ("deleted", None, None)
    assert last.endpoint == deleted.json()["endpoint"] == "http://site-a.scripted.test:8501"


async def test_a_promotion_for_an_unknown_group_is_dead_lettered_with_the_reason(
    app_and_target: tuple[FastAPI, ScriptedTarget], bus: InProcessBus
) -> None:
    _, target = app_and_target
    await bus.publish(promotion(2, group="site-x"))
    await bus.drain()

    assert target.applied == []
    [dead] = [event for event in bus.events_of(DeadLetter) if isinstance(event, DeadLetter)]
    assert dead.reason == "deployer: unknown node group 'site-x'; configured: site-a, site-b"
    assert dead.attempts == 1


async def test_health_readiness_and_metrics(app_and_target: tuple[FastAPI, ScriptedTarget], bus: InProcessBus) -> None:
    app, _ = app_and_target
    await bus.publish(promotion(9, group="site-a"))  # never ready: timed out, nothing to roll back to
    await eventually(lambda: final_update(bus, "site-a") is not None, what="the failed rollout")
    async with http(app) as client:
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")

    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"bus": "ok", "scripted": "ok", "store": "ok"}
    assert 'edgeloop_deployer_rollouts_total{outcome="failed",target="scripted"} 1.0' in metrics.text
    assert 'edgeloop_deployer_serving_version{model="catdog",node_group="site-a"} -1.0' in metrics.text
