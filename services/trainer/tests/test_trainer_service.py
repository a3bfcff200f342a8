"""The trainer's logic with fakes of the registry, ingest and the engine: queue, coalescing, failures, labels."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from edgeloop_trainer.ports import RegistryError, RegistryUnavailableError, TrainingRequest
from edgeloop_trainer.service import TrainerConfig, TrainerService
from trainer_testing import (
    FakeEngine,
    FakeRegistry,
    FakeSamples,
    Published,
    make_service,
    png,
    seed_folder,
    version_folders,
    wait_for,
)

MODEL = "catdog"


def request(reason: str = "drift", *, model: str = MODEL, request_id: str | None = None) -> TrainingRequest:
    return TrainingRequest(
        request_id or str(uuid.uuid4()),
        model,
        reason,
        "test",
        f"{reason} seen",
        datetime.now(UTC),  # type: ignore[arg-type]
    )


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    return seed_folder(tmp_path / "seed", {"cat": 8, "dog": 8})


async def test_three_requests_during_a_run_give_exactly_one_follow_up(tmp_path: Path, seed: Path) -> None:
    engine = FakeEngine(tmp_path / "models")
    engine.gate = threading.Event()
    service = make_service(tmp_path, engine=engine)

    first = await service.request_training(request("manual"))
    await wait_for(engine.started.is_set)
    during = [await service.request_training(request(reason)) for reason in ("drift", "new_labels", "schedule")]

    assert not first.coalesced
    assert len({e.run_id for e in during}) == 1 and during[0].run_id != first.run_id
    assert [e.coalesced for e in during] == [False, True, True]
    running = await service.get_run(first.run_id)
    assert running is not None and running.state == "running"
    engine.gate.set()
    await service.wait_idle()

    assert len(engine.jobs) == 2
    follow_up = await service.get_run(during[0].run_id)
    assert follow_up is not None and follow_up.state == "succeeded"
    assert sorted(r.reason for r in follow_up.requests) == ["drift", "new_labels", "schedule"]
    assert version_folders(tmp_path / "models", MODEL) == ["1", "2"]


async def test_a_request_returns_once_it_is_queued_not_when_training_ends(tmp_path: Path, seed: Path) -> None:
    engine = FakeEngine(tmp_path / "models")
    engine.gate = threading.Event()
    service = make_service(tmp_path, engine=engine)

    enqueued = await service.request_training(request())
    recorded = service.runs.get(enqueued.run_id)
    engine.gate.set()
    await service.wait_idle()

    assert recorded is not None and recorded.state in ("queued", "running")
    assert len(recorded.requests) == 1


async def test_a_redelivered_request_changes_nothing(tmp_path: Path, seed: Path) -> None:
    engine = FakeEngine(tmp_path / "models")
    engine.gate = threading.Event()
    service = make_service(tmp_path, engine=engine)

    once = await service.request_training(request(request_id="event-1"))
    again = await service.request_training(request(request_id="event-1"))
    engine.gate.set()
    await service.wait_idle()

    assert again.duplicate and again.run_id == once.run_id
    assert len(engine.jobs) == 1


async def test_a_run_registers_its_version_with_lineage_and_records_the_promotion(tmp_path: Path, seed: Path) -> None:
    registry = FakeRegistry()
    registry.add(MODEL, 1, (tmp_path / "models" / MODEL / "1").as_uri(), accuracy=0.7, production=True)
    samples = FakeSamples()
    samples.label("s-1", "cat", png((200, 40, 40), 99))
    engine = FakeEngine(tmp_path / "models", accuracy=0.75)
    service = make_service(tmp_path, registry=registry, samples=samples, engine=engine)

    enqueued = await service.request_training(request("new_labels"))
    await service.wait_idle()

    run = await service.get_run(enqueued.run_id)
    assert run is not None and run.state == "succeeded", run
    registered = registry.versions[MODEL][2]
    snapshot = service.snapshots.load(registered["lineage"]["dataset_snapshot_id"])
    assert run.snapshot_id == snapshot.snapshot_id
    assert len(snapshot.items) == 17 and "sample:s-1" in {item.source for item in snapshot.items}
    assert registered["lineage"]["parent_version"] == 1  # warm start from production
    assert registered["metrics"]["baseline"] == {"version": 1, "accuracy": 0.7}
    assert registered["metrics"]["evaluation_set_id"] == snapshot.evaluation_set_id
    assert registered["artifact_uri"].endswith(f"/{MODEL}/2") and "train_started_at" in registered
    assert run.result is not None
    assert run.result["version"] == 2 and run.result["promotion"]["promoted"] is True
    assert run.result["promotion"]["previous_version"] == 1
    assert registry.promotions == [(MODEL, 2, True, f"training run {run.run_id} (new_labels)")]
    assert run.progress["stage"] == "done" and run.progress["fraction"] == 1.0
    # the run's log: a line per stage (and epoch), kept with the run for the console
    stages = [line.split()[1].rstrip(":") for line in run.progress["log"]]
    assert stages[0] == "snapshot" and stages[-3:] == ["registering", "promoting", "done"], run.progress["log"]
    assert "training epoch 2/2" in " | ".join(run.progress["log"]) and run.progress["log"][3].endswith("version 2")


async def test_warm_start_follows_the_setting_and_the_production_version(tmp_path: Path, seed: Path) -> None:
    registries = [FakeRegistry(), FakeRegistry()]
    for registry in registries:
        registry.add(MODEL, 4, "file:///models/catdog/4", accuracy=0.7, production=True)
        registry.add(MODEL, 5, "file:///models/catdog/5", accuracy=0.6)
    warm_engine, cold_engine = FakeEngine(tmp_path / "warm"), FakeEngine(tmp_path / "cold")
    warm = make_service(
        tmp_path / "a", registry=registries[0], engine=warm_engine, config=TrainerConfig(seed_data_dir=seed)
    )
    cold = make_service(
        tmp_path / "b",
        registry=registries[1],
        engine=cold_engine,
        config=TrainerConfig(seed_data_dir=seed, warm_start=False),
    )

    await warm.request_training(request())
    await warm.wait_idle()
    await cold.request_training(request())
    await cold.wait_idle()

    warm_job, cold_job = warm_engine.jobs[0], cold_engine.jobs[0]
    assert warm_job.warm_start_from is not None and warm_job.warm_start_from.version == 4
    assert cold_job.warm_start_from is None
    assert warm_job.baseline == cold_job.baseline and cold_job.baseline is not None
    assert warm_job.min_version == 6  # after every registered version, not only production


async def test_a_warm_start_is_given_the_snapshot_production_learned_from(tmp_path: Path, seed: Path) -> None:
    registry = FakeRegistry()
    registry.add(MODEL, 1, "file:///elsewhere/catdog/1", accuracy=0.5, production=True)  # no snapshot known
    samples = FakeSamples()
    engine = FakeEngine(tmp_path / "models", accuracy=0.9)
    service = make_service(tmp_path, registry=registry, samples=samples, engine=engine)

    await service.request_training(request("manual"))
    await service.wait_idle()
    assert registry.production_of[MODEL] == 2
    samples.label("s-1", "cat", png((200, 40, 40), 99))
    await service.request_training(request("new_labels"))
    await service.wait_idle()

    first, second = engine.jobs
    assert first.parent_snapshot is None  # production 1 names no snapshot: the engine falls back to the sources
    assert second.parent_snapshot is not None and second.parent_snapshot == first.snapshot
    assert second.snapshot != first.snapshot


@pytest.mark.parametrize("stage", ["training", "exporting"])
async def test_a_failing_training_leaves_nothing_registered_and_no_version(
    tmp_path: Path, seed: Path, stage: str
) -> None:
    registry = FakeRegistry()
    engine = FakeEngine(tmp_path / "models")
    engine.fail_at = stage
    service = make_service(tmp_path, registry=registry, engine=engine)

    enqueued = await service.request_training(request())
    await service.wait_idle()
    await service.resume()  # as after a restart: half-written exports are cleaned

    run = await service.get_run(enqueued.run_id)
    assert run is not None and run.state == "failed"
    assert "simulated" in (run.error or "")
    assert registry.versions == {} and registry.promotions == []
    assert [name for name in version_folders(tmp_path / "models", MODEL) if not name.startswith(".")] == []
    assert version_folders(tmp_path / "models", MODEL) == []


async def test_a_refused_registration_removes_the_export(tmp_path: Path, seed: Path) -> None:
    registry = FakeRegistry()
    registry.fail_register = RegistryError("registry refused POST /versions (422): metrics.accuracy missing")
    service = make_service(tmp_path, registry=registry)

    enqueued = await service.request_training(request())
    await service.wait_idle()

    run = await service.get_run(enqueued.run_id)
    assert run is not None and run.state == "failed" and "metrics.accuracy missing" in (run.error or "")
    assert version_folders(tmp_path / "models", MODEL) == []
    assert registry.versions == {}


async def test_a_lost_answer_after_the_registry_committed_is_not_a_failure(tmp_path: Path, seed: Path) -> None:
    registry = FakeRegistry()
    registry.commit_then_fail = True
    service = make_service(tmp_path, registry=registry)

    enqueued = await service.request_training(request())
    await service.wait_idle()

    run = await service.get_run(enqueued.run_id)
    assert run is not None and run.state == "succeeded", run.error
    assert version_folders(tmp_path / "models", MODEL) == ["1"]
    assert list(registry.versions[MODEL]) == [1]


async def test_an_unreachable_registry_at_registration_fails_the_run_without_a_registered_version(
    tmp_path: Path, seed: Path
) -> None:
    registry = FakeRegistry()
    registry.fail_register = RegistryUnavailableError("registry unreachable at http://registry:8083")
    service = make_service(tmp_path, registry=registry)

    enqueued = await service.request_training(request())
    await service.wait_idle()

    run = await service.get_run(enqueued.run_id)
    assert run is not None and run.state == "failed" and "unreachable" in (run.error or "")
    assert registry.versions == {} and version_folders(tmp_path / "models", MODEL) == []


async def test_a_restart_resumes_queued_runs_and_retries_an_interrupted_one(tmp_path: Path, seed: Path) -> None:
    # What a killed trainer leaves: a run 'running' with an unregistered export, a half-written folder, a queued run.
    crashed = make_service(tmp_path)
    interrupted = crashed.runs.enqueue(request("drift", model="a"))
    crashed.runs.start_next("a", datetime.now(UTC))
    crashed.runs.update(interrupted.run_id, candidate_version=1)
    (tmp_path / "models" / "a" / "1").mkdir(parents=True)
    (tmp_path / "models" / "a" / ".tmp-2-crash").mkdir()
    waiting = crashed.runs.enqueue(request("manual", model="b"))

    registry = FakeRegistry()
    engine = FakeEngine(tmp_path / "models")
    restarted = make_service(tmp_path, registry=registry, engine=engine)
    await restarted.resume()
    await restarted.wait_idle()

    old = await restarted.get_run(interrupted.run_id)
    assert old is not None and old.state == "failed" and "interrupted" in (old.error or "")
    retry_id = (old.error or "").rsplit(" ", 1)[-1]
    retry = await restarted.get_run(retry_id)
    assert retry is not None and retry.state == "succeeded" and retry.attempt == 2
    assert retry.requests[0].reason == "drift"
    resumed = await restarted.get_run(waiting.run_id)
    assert resumed is not None and resumed.state == "succeeded"
    assert sorted(job.model_name for job in engine.jobs) == ["a", "b"]
    assert version_folders(tmp_path / "models", "a") == ["1"]  # the orphan 1 was removed, then 1 trained anew
    assert sorted(registry.versions) == ["a", "b"]


async def test_an_interrupted_retry_is_not_retried_forever(tmp_path: Path, seed: Path) -> None:
    service = make_service(tmp_path)
    enqueued = await service.request_training(request())
    await service.wait_idle()
    service.runs.update(enqueued.run_id, state="running")  # as if it crashed on its last attempt
    retried = service.runs.enqueue(request(), attempt=2)
    service.runs.update(enqueued.run_id, state="succeeded")
    service.runs.start_next(MODEL, datetime.now(UTC))

    await service.resume()
    await service.wait_idle()

    last = await service.get_run(retried.run_id)
    assert last is not None and last.state == "failed" and "not retried (attempt 2 of 2)" in (last.error or "")


async def test_every_n_labels_ask_for_one_training(tmp_path: Path, seed: Path) -> None:
    published = Published()
    service = make_service(
        tmp_path,
        publish=published,
        config=TrainerConfig(seed_data_dir=seed, retrain_every_labels=3, label_models=("m1", "m2")),
    )

    for n in range(7):
        await service.count_label(f"label-{n}")

    assert [(e.model_name, e.reason) for e, _ in published.events] == [("m1", "new_labels"), ("m2", "new_labels")] * 2
    assert published.events[0][0].detail == "3 new labels since the last training"
    assert service.runs.labels_since_request("m1") == 1


async def test_labels_in_a_snapshot_restart_the_count(tmp_path: Path, seed: Path) -> None:
    published = Published()
    service = make_service(
        tmp_path,
        publish=published,
        config=TrainerConfig(seed_data_dir=seed, retrain_every_labels=3, label_models=(MODEL,)),
    )
    await service.count_label("label-1")
    await service.count_label("label-2")

    await service.request_training(request())
    await service.wait_idle()
    await service.count_label("label-3")

    assert published.events == []


async def test_a_manual_request_is_queued_and_published_once_under_its_id(tmp_path: Path, seed: Path) -> None:
    published = Published()
    service = make_service(tmp_path, publish=published)

    enqueued = await service.request_by_hand(MODEL, "manual", "alice", "new camera")
    event, event_id = published.events[0]
    echoed = await service.request_training(
        TrainingRequest(event_id or "", MODEL, event.reason, event.requested_by, event.detail, event.requested_at)
    )
    await service.wait_idle()

    assert event.requested_by == "alice" and event.reason == "manual"
    assert echoed.duplicate and echoed.run_id == enqueued.run_id


async def test_samples_whose_image_is_missing_or_altered_are_left_out(tmp_path: Path, seed: Path) -> None:
    samples = FakeSamples()
    samples.label("good", "cat", png((10, 10, 10), 1))
    samples.label("altered", "dog", png((20, 20, 20), 2), sha256="a" * 64)
    samples.label("gone", "dog", png((30, 30, 30), 3))
    del samples.images["gone"]
    engine = FakeEngine(tmp_path / "models")
    service = make_service(tmp_path, samples=samples, engine=engine)

    await service.request_training(request())
    await service.wait_idle()
    await service.request_training(request())
    await service.wait_idle()

    sources = {item.source for item in engine.jobs[0].snapshot.items}
    assert "sample:good" in sources and "sample:altered" not in sources and "sample:gone" not in sources
    assert engine.jobs[0].snapshot.snapshot_id == engine.jobs[1].snapshot.snapshot_id
    assert samples.reads == 3 + 2  # the good image is cached after the first snapshot


async def test_stopping_during_a_run_queues_its_requests_again(tmp_path: Path, seed: Path) -> None:
    engine = FakeEngine(tmp_path / "models")
    engine.gate = threading.Event()
    service = make_service(tmp_path, engine=engine)
    enqueued = await service.request_training(request("drift"))
    await wait_for(engine.started.is_set)

    stopping = service.stop(timeout_s=10)
    engine.gate.set()
    await stopping

    run = await service.get_run(enqueued.run_id)
    assert run is not None and run.state == "failed" and "cancelled" in (run.error or "")
    queued = service.runs.find(state="queued")
    assert [r.requests[0].reason for r in queued] == ["drift"]
    assert version_folders(tmp_path / "models", MODEL) == []


def test_the_service_module_imports_no_io_framework() -> None:
    import edgeloop_trainer.service as module

    source = Path(module.__file__).read_text()
    for framework in ("fastapi", "httpx", "sqlalchemy", "tensorflow", "keras", "aiokafka"):
        assert f"import {framework}" not in source and f"from {framework}" not in source
    assert TrainerService.__module__ == "edgeloop_trainer.service"
