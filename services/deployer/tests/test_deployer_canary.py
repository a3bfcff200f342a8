"""Canary rollouts with a scripted target and the real SQLite store: the answers a gateway or an edge agent would
publish decide.

The answers are made here the way the gateway and the edge agent make them (docs/deployer.md, "Canary rollouts"): a
sample in the canary's share (``in_canary_share``) is answered by the canary's version, or -- the canary failing --
by the stable version. An edge agent's answer comes through ingest as ``served_by=edge``, or, for a hard example the
deep cloud model answered, with the edge model's answer in ``joint``. test_deployer_canary_local.py runs the same on
real model servers, a real gateway and Kafka; services/edge/tests/test_edge_canary.py the edge agent's split.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from deployer_testing import ScriptedTarget, eventually, final_update, phases, updates
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import BlobRef, DeploymentUpdated, InferenceCompleted, JointInference, in_canary_share
from edgeloop_deployer.adapters.store import SqlDeploymentStore, create_sql_engine
from edgeloop_deployer.app import create_app
from edgeloop_deployer.canary import ArmStats, Canary, CanaryPolicy, CanaryStats, judge
from edgeloop_deployer.service import RolloutConfig, RolloutService
from edgeloop_deployer.settings import Settings

GROUP = "site-a"
POLICY = CanaryPolicy(
    weight=0.3, window_s=0.6, settle_s=0.0, min_samples=10, max_error_rate=0.05, check_interval_s=0.02
)


def make_service(db: Path, bus: InProcessBus, target: ScriptedTarget, policy: CanaryPolicy = POLICY) -> RolloutService:
    store = SqlDeploymentStore(create_sql_engine(f"sqlite:///{db}"))
    config = RolloutConfig(node_groups=(GROUP,), rollout_timeout_s=1.0, poll_interval_s=0.01, canary=policy)
    return RolloutService(target=target, store=store, publish=bus.publish, config=config)


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    events = InProcessBus(source="test")
    await events.start()
    yield events
    await events.stop()


def answer(sample_id: str, version: int, confidence: float, latency_ms: float = 10.0) -> InferenceCompleted:
    return InferenceCompleted(
        sample_id=sample_id,
        device_id="cam-1",
        site_id=GROUP,
        image=BlobRef(uri=f"file:///tmp/{sample_id}.jpg", sha256="0" * 64, size_bytes=100, content_type="image/jpeg"),
        model_name="catdog",
        model_version=version,
        scores={"cat": confidence, "dog": 1 - confidence},
        top_label="cat",
        confidence=confidence,
        latency_ms=latency_ms,
        served_by="cloud",
    )


def answers(
    n: int, *, weight: float, canary: int = 2, canary_confidence: float = 0.9, canary_fails: bool = False
) -> list[InferenceCompleted]:
    """What a gateway answers for ``n`` samples of the group while the canary takes ``weight`` of them."""
    made = []
    for _ in range(n):
        sample_id = uuid.uuid4().hex
        if in_canary_share(sample_id, weight) and not canary_fails:
            made.append(answer(sample_id, canary, canary_confidence))
        else:  # the stable version's share, or the canary's answered by the stable version (it failed)
            made.append(answer(sample_id, 1, 0.9))
    return made


def edge_answer(
    sample_id: str, version: int, confidence: float, *, hard: bool = False, latency_ms: float = 10.0
) -> InferenceCompleted:
    """An edge agent's answer as ingest publishes it. ``hard``: a hard example the deep cloud model (another model)
    answered for the device; the edge model's own answer is in ``joint``."""
    edge = answer(sample_id, version, confidence, latency_ms).model_copy(update={"served_by": "edge"})
    if not hard:
        return edge
    joint = JointInference(
        edge_model_name="catdog",
        edge_model_version=version,
        edge_scores={"cat": confidence, "dog": 1 - confidence},
        edge_latency_ms=latency_ms,
        outcome="cloud",
        cloud_model_name="catdog-deep",
        cloud_model_version=7,
        cloud_scores={"cat": 0.99, "dog": 0.01},
        cloud_latency_ms=80.0,
    )
    return edge.model_copy(
        update={
            "model_name": "catdog-deep",
            "model_version": 7,
            "scores": {"cat": 0.99, "dog": 0.01},
            "confidence": 0.99,
            "latency_ms": 95.0,
            "served_by": "cloud",
            "hard_example": True,
            "joint": joint,
        }
    )


def canary_updates(bus: InProcessBus) -> list[tuple[str, str | None]]:
    return [(e.phase, e.canary_status) for e in updates(bus, group=GROUP)]


def watching(bus: InProcessBus) -> DeploymentUpdated | None:
    return next((e for e in updates(bus, group=GROUP) if e.canary_status == "watching"), None)


async def serving_version_1(service: RolloutService) -> None:
    await service.deploy("catdog", 1, GROUP, trigger="http")  # nothing serves yet: no canary, at once
    await service.wait_idle()


async def test_a_good_canary_is_watched_for_its_window_then_rolled_out(tmp_path: Path, bus: InProcessBus) -> None:
    target = ScriptedTarget()
    service = make_service(tmp_path / "d.sqlite3", bus, target)
    await serving_version_1(service)

    await service.deploy("catdog", 2, GROUP, trigger="promotion", reason="promoted")
    await eventually(lambda: watching(bus) is not None, what="the canary watching")
    started = watching(bus)
    assert started is not None
    assert (started.phase, started.desired_version, started.actual_version) == ("canary", 2, 1)
    assert (started.canary_version, started.canary_weight) == (2, 0.3)
    assert started.canary_endpoint == "http://site-a-canary.scripted.test:8501"
    assert started.endpoint == "http://site-a.scripted.test:8501"  # the stable server keeps serving the rest
    for event in answers(80, weight=0.3):
        await service.on_inference(event)
    await service.wait_idle()

    assert canary_updates(bus) == [
        ("pending", None),
        ("progressing", None),
        ("ready", None),
        ("pending", None),
        ("canary", "deploying"),
        ("canary", "watching"),
        ("progressing", "passed"),
        ("ready", "passed"),
    ]
    last = final_update(bus, GROUP)
    assert last is not None and (last.desired_version, last.actual_version, last.canary_version) == (2, 2, 2)
    assert last.reason.startswith("canary of version 2 passed over 0.6 s (version 2: ")
    assert last.canary_endpoint is None  # removed once the group serves the candidate
    assert target.canaries_applied() == [2] and target.versions_applied() == [1, 2]
    assert target.canaries_deleted == [("catdog", GROUP)]
    canary, stats = await service.canary("catdog", GROUP)
    assert (canary.status, stats) == ("completed", None)


async def test_a_canary_answering_with_low_confidence_is_rolled_back_with_the_reason(
    tmp_path: Path, bus: InProcessBus
) -> None:
    target = ScriptedTarget()
    service = make_service(tmp_path / "d.sqlite3", bus, target)
    await serving_version_1(service)

    await service.deploy("catdog", 2, GROUP, trigger="promotion")
    await eventually(lambda: watching(bus) is not None, what="the canary watching")
    for event in answers(120, weight=0.3, canary_confidence=0.55):
        await service.on_inference(event)
    await service.wait_idle()

    last = final_update(bus, GROUP)
    assert last is not None
    assert (last.phase, last.desired_version, last.actual_version) == ("rolled_back", 2, 1)
    assert (last.canary_version, last.canary_status) == (2, "failed")
    assert last.reason.startswith("canary of version 2 failed: mean confidence 0.550 against 0.900 of version 1")
    assert last.reason.endswith("; version 1 keeps serving")
    assert target.versions_applied() == [1]  # the group's own workload never saw version 2
    assert target.canaries_deleted == [("catdog", GROUP)]
    state, _ = await service.describe("catdog", GROUP)
    assert (state.phase, state.actual_version, state.reason) == ("rolled_back", 1, last.reason)


async def test_a_canary_that_fails_to_answer_is_stopped_before_its_window_is_over(
    tmp_path: Path, bus: InProcessBus
) -> None:
    target = ScriptedTarget()
    slow_window = CanaryPolicy(**{**POLICY.__dict__, "window_s": 60.0})
    service = make_service(tmp_path / "d.sqlite3", bus, target, slow_window)
    await serving_version_1(service)

    await service.deploy("catdog", 2, GROUP, trigger="promotion")
    await eventually(lambda: watching(bus) is not None, what="the canary watching")
    for event in answers(120, weight=0.3, canary_fails=True):
        await service.on_inference(event)
    await eventually(lambda: final_update(bus, GROUP) is not None, what="the canary stopped", timeout_s=5.0)

    last = final_update(bus, GROUP)
    assert last is not None and (last.phase, last.actual_version) == ("rolled_back", 1)
    assert last.reason.startswith("canary of version 2 failed: error rate 1.00 (")
    assert "answers of its share failed) above the 0.05 allowed" in last.reason


async def test_an_edge_agents_answers_are_judged_with_the_edge_models_part_of_hard_examples(
    tmp_path: Path, bus: InProcessBus
) -> None:
    """The site's edge agent splits too: its answers (``served_by=edge``) and the edge model's answers to the hard
    examples the cloud answered (in ``joint``, under the deep model's name) count like the gateway's."""
    target = ScriptedTarget()
    long_window = CanaryPolicy(**{**POLICY.__dict__, "window_s": 60.0, "min_samples": 1000})
    service = make_service(tmp_path / "d.sqlite3", bus, target, long_window)
    await serving_version_1(service)
    await service.deploy("catdog", 2, GROUP, trigger="promotion")
    await eventually(lambda: watching(bus) is not None, what="the canary watching")

    made = [uuid.uuid4().hex for _ in range(90)]
    in_share = [s for s in made if in_canary_share(s, POLICY.weight)]
    for n, sample_id in enumerate(made):  # the canary is less sure (0.6) than the stable version (0.9)
        version, confidence = (2, 0.6) if sample_id in in_share else (1, 0.9)
        await service.on_inference(edge_answer(sample_id, version, confidence, hard=n % 3 == 0))
    _, seen = await service.canary("catdog", GROUP)

    assert seen is not None
    assert (seen.canary.answers, seen.canary.errors, seen.stable.answers) == (len(in_share), 0, 90 - len(in_share))
    # the edge model's confidence, not the deep model's answer to the hard examples (0.99)
    assert seen.canary.mean_confidence == pytest.approx(0.6) and seen.stable.mean_confidence == pytest.approx(0.9)


async def test_an_edge_agent_answering_the_canarys_share_with_the_stable_version_fails_it(
    tmp_path: Path, bus: InProcessBus
) -> None:
    """The error signal at the edge: the agent's fallback answers (the stable version, in the canary's share)."""
    target = ScriptedTarget()
    slow_window = CanaryPolicy(**{**POLICY.__dict__, "window_s": 60.0})
    service = make_service(tmp_path / "d.sqlite3", bus, target, slow_window)
    await serving_version_1(service)

    await service.deploy("catdog", 2, GROUP, trigger="promotion")
    await eventually(lambda: watching(bus) is not None, what="the canary watching")
    for n in range(120):
        await service.on_inference(edge_answer(uuid.uuid4().hex, 1, 0.9, hard=n % 4 == 0))
    await eventually(lambda: final_update(bus, GROUP) is not None, what="the canary stopped", timeout_s=5.0)

    last = final_update(bus, GROUP)
    assert last is not None and (last.phase, last.actual_version) == ("rolled_back", 1)
    assert last.reason.startswith("canary of version 2 failed: error rate 1.00 (")


async def test_a_canary_that_never_becomes_ready_is_removed_and_the_stable_version_untouched(
    tmp_path: Path, bus: InProcessBus
) -> None:
    target = ScriptedTarget(canary_outcomes={2: "failed"})
    service = make_service(tmp_path / "d.sqlite3", bus, target)
    await serving_version_1(service)

    await service.deploy("catdog", 2, GROUP, trigger="promotion")
    await service.wait_idle()

    last = final_update(bus, GROUP)
    assert last is not None and (last.phase, last.canary_status) == ("rolled_back", "failed")
    assert last.reason.startswith("canary of version 2 failed: it did not become ready: ProgressDeadlineExceeded")
    assert watching(bus) is None and target.versions_applied() == [1]


async def test_a_restart_mid_canary_resumes_its_watch_with_what_it_had_seen(tmp_path: Path, bus: InProcessBus) -> None:
    db = tmp_path / "d.sqlite3"
    long_window = CanaryPolicy(**{**POLICY.__dict__, "window_s": 1.5})
    first = make_service(db, bus, ScriptedTarget(), long_window)
    await serving_version_1(first)
    await first.deploy("catdog", 2, GROUP, trigger="promotion")
    await eventually(lambda: watching(bus) is not None, what="the canary watching")
    before = answers(60, weight=0.3)
    for event in before:
        await first.on_inference(event)
    await first.close()  # the deployer stops mid-canary
    window_ends = (await first.canary("catdog", GROUP))[0].window_ends_at

    target = ScriptedTarget()
    second = make_service(db, bus, target, long_window)
    await second.load_canaries()
    resumed = await second.resume_unfinished()
    for event in before[:10]:  # redelivered after the restart: counted once
        await second.on_inference(event)
    canary, stats = await second.canary("catdog", GROUP)
    assert [(r.action, r.trigger) for r in resumed] == [("canary", "resume")]
    assert canary.status == "watching" and canary.window_ends_at == window_ends  # the same window, not a new one
    assert stats is not None and stats.canary.samples + stats.stable.answers == 60
    for event in answers(60, weight=0.3):
        await second.on_inference(event)
    await second.wait_idle()

    last = final_update(bus, GROUP)
    assert last is not None and (last.phase, last.actual_version, last.canary_status) == ("ready", 2, "passed")
    assert "120 answers" not in last.reason and datetime.now(UTC) >= window_ends
    assert target.canaries_applied() == [] and target.versions_applied() == [2]  # resumed watching: not redeployed


async def test_weight_zero_rolls_out_at_once_and_a_first_deployment_has_no_canary(
    tmp_path: Path, bus: InProcessBus
) -> None:
    target = ScriptedTarget()
    service = make_service(tmp_path / "d.sqlite3", bus, target)
    await serving_version_1(service)
    await service.deploy("catdog", 2, GROUP, trigger="http", canary_weight=0.0)
    await service.wait_idle()

    assert phases(bus, GROUP)[-3:] == [("pending", 2, 1), ("progressing", 2, 1), ("ready", 2, 2)]
    assert target.canaries_applied() == []


# --- the HTTP API: the state, and an operator's abort or complete ----------------------------------------------


async def test_the_api_shows_the_canary_and_an_operator_aborts_or_completes_it(tmp_path: Path) -> None:
    bus = InProcessBus(source="test")
    settings = Settings(
        common=Settings().common.model_copy(update={"mode": "standalone", "data_dir": tmp_path}),
        node_groups=GROUP,
        poll_interval_s=0.01,
        rollout_timeout_s=1.0,
        canary_weight=0.25,
        canary_window_s=60,
        canary_settle_s=0,
        canary_min_samples=5,
        canary_check_interval_s=0.02,
    )
    target = ScriptedTarget()
    app = create_app(settings, bus=bus, target=target)
    async with app.router.lifespan_context(app):
        await bus.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://deployer") as http:
            none_yet = await http.get(f"/v1/deployments/catdog/{GROUP}/canary")
            await http.post("/v1/deployments", json={"model_name": "catdog", "version": 1, "node_group": GROUP})
            await eventually(lambda: final_update(bus, GROUP) is not None, what="version 1 ready")
            no_canary = await http.post(f"/v1/deployments/catdog/{GROUP}/canary/abort", json={"reason": "x"})

            await http.post("/v1/deployments", json={"model_name": "catdog", "version": 2, "node_group": GROUP})
            await eventually(lambda: watching(bus) is not None, what="the canary of 2 watching")
            for event in answers(40, weight=0.25):
                await bus.publish(event)  # through the deployer's InferenceCompleted subscription
            await bus.drain()
            live = (await http.get(f"/v1/deployments/catdog/{GROUP}/canary")).json()
            aborted = await http.post(
                f"/v1/deployments/catdog/{GROUP}/canary/abort", json={"reason": "the night shift says no"}
            )
            await eventually(lambda: (final_update(bus, GROUP) or updates(bus)[0]).desired_version == 2, what="2 ended")
            after_abort = (await http.get(f"/v1/deployments/catdog/{GROUP}/canary")).json()

            await http.post("/v1/deployments", json={"model_name": "catdog", "version": 3, "node_group": GROUP})
            await eventually(lambda: updates(bus)[-1].canary_status == "watching", what="the canary of 3 watching")
            completed = await http.post(f"/v1/deployments/catdog/{GROUP}/canary/complete", json={})
            await eventually(lambda: updates(bus)[-1].phase == "ready", what="3 ready")
            deployment = (await http.get(f"/v1/deployments/catdog/{GROUP}")).json()
        await bus.stop()

    assert none_yet.status_code == 404, none_yet.text
    assert no_canary.status_code == 409 and "no canary of catdog in site-a to abort" in no_canary.json()["detail"]
    assert (live["status"], live["version"], live["stable_version"], live["weight"]) == ("watching", 2, 1, 0.25)
    assert live["endpoint"] == "http://site-a-canary.scripted.test:8501"
    assert live["canary"]["answers"] + live["stable"]["answers"] == 40 and live["canary"]["errors"] == 0
    assert live["policy"]["window_s"] == 60 and live["policy"]["min_samples"] == 5
    assert aborted.status_code == 202, aborted.text
    assert after_abort["status"] == "rolled_back" and after_abort["endpoint"] is None
    assert after_abort["reason"].startswith("canary of version 2 failed: aborted by hand: the night shift says no (")
    assert completed.status_code == 202, completed.text
    assert (deployment["actual_version"], deployment["phase"]) == (3, "ready")
    assert deployment["reason"].startswith("canary of version 3 completed by hand (version 3: ")
    assert target.versions_applied() == [1, 3]


# --- the verdict ----------------------------------------------------------------------------------------------


def stats(canary: ArmStats, stable: ArmStats) -> CanaryStats:
    return CanaryStats(canary=canary, stable=stable)


CANARY = Canary("c1", "catdog", GROUP, 2, 1, 0.3, "watching", "", datetime.now(UTC), window_ends_at=datetime.now(UTC))


def test_a_slower_canary_fails_on_its_p95_latency_and_a_quiet_one_waits_then_fails() -> None:
    now = CANARY.window_ends_at or datetime.now(UTC)
    slow = judge(CANARY, stats(ArmStats(20, 0, 0.9, 40.0), ArmStats(50, 0, 0.9, 20.0)), POLICY, now=now)
    assert slow.decision == "fail"
    assert slow.reason == "p95 latency 40.0 ms against 20.0 ms of version 1: 2.00 times, above the 1.5 allowed"

    quiet = stats(ArmStats(3, 0, 0.9, 10.0), ArmStats(50, 0, 0.9, 10.0))
    assert judge(CANARY, quiet, POLICY, now=now).decision == "wait"
    late = judge(CANARY, quiet, POLICY, now=now + timedelta(seconds=POLICY.max_wait_s))
    assert late.decision == "fail" and late.reason.startswith("not enough traffic to judge it: 3 samples of version 2")

    fine = judge(CANARY, stats(ArmStats(20, 0, 0.88, 12.0), ArmStats(50, 0, 0.9, 10.0)), POLICY, now=now)
    assert fine.decision == "pass"
    early = judge(
        CANARY, stats(ArmStats(20, 0, 0.88, 12.0), ArmStats(50, 0, 0.9, 10.0)), POLICY, now=now - timedelta(1)
    )
    assert early.decision == "wait"  # passing needs the whole window
