"""The trainer app over HTTP and the in-process bus, with fakes of the registry, ingest and the engine."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import BlobRef, SampleLabeled, TrainingRequested
from edgeloop_common.settings import CommonSettings
from edgeloop_trainer.app import create_app
from edgeloop_trainer.settings import Settings
from prometheus_client.parser import text_string_to_metric_families
from trainer_testing import FakeEngine, FakeRegistry, FakeSamples, seed_folder, wait_for


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        seed_data_dir=seed_folder(tmp_path / "seed", {"cat": 8, "dog": 8}),
        model_base=tmp_path / "models",
        ingest_url="",
        models="catdog",
        retrain_every_labels=3,
        eval_fraction=0.3,
        common=CommonSettings(mode="standalone", data_dir=tmp_path / "data"),
    )


@asynccontextmanager
async def running(
    settings: Settings,
    bus: InProcessBus,
    registry: FakeRegistry,
    engine: FakeEngine,
    samples: FakeSamples | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app started as uvicorn would (lifespan), reached through an HTTP client; ``client.app`` is the app."""
    await bus.start()
    app = create_app(settings, bus=bus, registry=registry, samples=samples, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://trainer") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
    await bus.stop()


async def finished(client: httpx.AsyncClient, run_id: str) -> dict:  # type: ignore[type-arg]
    async def done() -> bool:
        return (await client.get(f"/v1/trainings/{run_id}")).json()["state"] in ("succeeded", "failed")

    await wait_for(done)
    body: dict = (await client.get(f"/v1/trainings/{run_id}")).json()  # type: ignore[type-arg]
    return body


async def test_a_person_asks_for_a_training_and_follows_it(settings: Settings, tmp_path: Path) -> None:
    registry, bus = FakeRegistry(), InProcessBus(source="test")
    engine = FakeEngine(tmp_path / "models")
    engine.gate = threading.Event()
    async with running(settings, bus, registry, engine) as client:
        answer = await client.post("/v1/trainings", json={"model_name": "catdog", "requested_by": "alice"})
        await wait_for(engine.started.is_set)
        during = (await client.get(answer.headers["location"])).json()
        engine.gate.set()
        run = await finished(client, answer.json()["run_id"])
        listed = (await client.get("/v1/trainings", params={"model_name": "catdog", "state": "succeeded"})).json()
        other = (await client.get("/v1/trainings", params={"model_name": "other"})).json()

    assert answer.status_code == 202 and answer.json()["coalesced"] is False
    assert answer.headers["location"] == f"/v1/trainings/{answer.json()['run_id']}"
    assert during["state"] == "running" and during["progress"]["stage"] == "training"
    assert during["progress"]["epoch"] == 1 and during["progress"]["epochs"] == 2
    assert run["state"] == "succeeded" and run["requests"][0]["requested_by"] == "alice"
    assert run["result"]["version"] == 1 and run["snapshot_id"].startswith("snap-")
    assert run["result"]["promotion"] == {
        "promoted": True,
        "decision": "no production version yet",
        "previous_version": None,
    }
    assert [r["run_id"] for r in listed["trainings"]] == [run["run_id"]] and other["trainings"] == []
    published = [event for event in bus.events_of(TrainingRequested)]
    assert [(e.reason, e.requested_by) for e in published] == [("manual", "alice")]  # visible to others, run once


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model_name": "../etc"}, "model_name"),
        ({"model_name": "x" * 65}, "model_name"),
        ({"model_name": "catdog", "reason": "boredom"}, "reason"),
        ({"model_name": "catdog", "epochs": 3}, "epochs"),
    ],
)
async def test_bad_requests_are_refused_with_the_reason(
    settings: Settings,
    tmp_path: Path,
    body: dict,
    field: str,  # type: ignore[type-arg]
) -> None:
    async with running(settings, InProcessBus(), FakeRegistry(), FakeEngine(tmp_path / "models")) as client:
        answer = await client.post("/v1/trainings", json=body)
        missing = await client.get("/v1/trainings/run-nothing")
        trainings = (await client.get("/v1/trainings")).json()["trainings"]

    assert answer.status_code == 422 and field in answer.text
    assert missing.status_code == 404 and "run-nothing" in missing.json()["detail"]
    assert trainings == []


async def test_training_requested_events_are_queued_and_coalesced(settings: Settings, tmp_path: Path) -> None:
    bus, engine = InProcessBus(source="test"), FakeEngine(tmp_path / "models")
    engine.gate = threading.Event()
    async with running(settings, bus, FakeRegistry(), engine) as client:
        await bus.publish(TrainingRequested(model_name="catdog", reason="drift", requested_by="drift"))
        await wait_for(engine.started.is_set)
        for reason in ("drift", "schedule", "manual"):
            await bus.publish(TrainingRequested(model_name="catdog", reason=reason, requested_by="test"))
        await bus.drain()
        engine.gate.set()
        await wait_for(lambda: len(engine.jobs) == 2)
        runs = (await client.get("/v1/trainings")).json()["trainings"]
        await finished(client, runs[0]["run_id"])
        runs = (await client.get("/v1/trainings")).json()["trainings"]
        ready = await client.get("/readyz")

    assert [len(run["requests"]) for run in runs] == [3, 1]
    assert [run["state"] for run in runs] == ["succeeded", "succeeded"]
    assert ready.status_code == 200


async def test_every_n_labels_the_trainer_asks_for_a_training(settings: Settings, tmp_path: Path) -> None:
    bus, engine = InProcessBus(source="test"), FakeEngine(tmp_path / "models")
    samples = FakeSamples()
    async with running(settings, bus, FakeRegistry(), engine, samples) as client:
        for index in range(7):
            data = f"picture {index}".encode()
            samples.label(f"s{index}", "cat", data)
            image = BlobRef(
                sha256=hashlib.sha256(data).hexdigest(), uri="file:///x", content_type="image/png", size_bytes=1
            )
            await bus.publish(
                SampleLabeled(
                    sample_id=f"s{index}", device_id="d", site_id="site-a", image=image, label="cat", labeled_by="bob"
                )
            )
            await bus.drain()
            await bus.drain()  # the TrainingRequested the label handler may have published
            await client.app.state.service.wait_idle()  # type: ignore[attr-defined]

    requests = [e for e in bus.events_of(TrainingRequested)]
    assert [(e.model_name, e.reason) for e in requests] == [("catdog", "new_labels")] * 2
    assert len(engine.jobs) == 2


async def test_an_event_for_an_impossible_model_name_is_dead_lettered(settings: Settings, tmp_path: Path) -> None:
    bus = InProcessBus(source="test")
    async with running(settings, bus, FakeRegistry(), FakeEngine(tmp_path / "models")):
        await bus.publish(TrainingRequested(model_name="no/slashes", reason="drift", requested_by="drift"))
        await bus.drain()

    assert len(bus.dead_letters) == 1 and "no/slashes" in bus.dead_letters[0].reason


async def test_metrics_count_requests_and_runs_by_outcome_with_their_duration(
    settings: Settings, tmp_path: Path
) -> None:
    engine = FakeEngine(tmp_path / "models")
    async with running(settings, InProcessBus(source="test"), FakeRegistry(), engine) as client:
        first = (await client.post("/v1/trainings", json={"model_name": "catdog"})).json()
        await finished(client, first["run_id"])
        engine.fail_at = "training"
        second = (await client.post("/v1/trainings", json={"model_name": "catdog", "reason": "drift"})).json()
        await finished(client, second["run_id"])
        exposition = (await client.get("/metrics")).text

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    assert samples[("edgeloop_trainer_requests_total", (("reason", "manual"),))] == 1
    assert samples[("edgeloop_trainer_requests_total", (("reason", "drift"),))] == 1
    assert samples[("edgeloop_trainer_runs_total", (("outcome", "succeeded"),))] == 1
    assert samples[("edgeloop_trainer_runs_total", (("outcome", "failed"),))] == 1
    assert samples[("edgeloop_trainer_runs_total", (("outcome", "interrupted"),))] == 0
    assert samples[("edgeloop_trainer_run_duration_seconds_count", (("outcome", "failed"),))] == 1
    assert samples[("edgeloop_trainer_runs_in_progress", ())] == 0
