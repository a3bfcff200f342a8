"""The trainer trains image models: a TrainingRequested for the sensor failure model (retrained by the federated
service, docs/telemetry.md) is logged, counted and skipped, and the next request for its own model still runs."""

from __future__ import annotations

from pathlib import Path

import httpx
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import TrainingRequested
from edgeloop_common.settings import CommonSettings
from edgeloop_trainer.app import create_app
from edgeloop_trainer.settings import Settings
from prometheus_client.parser import text_string_to_metric_families
from trainer_testing import FakeEngine, FakeRegistry, seed_folder, wait_for


async def test_a_training_request_for_the_failure_model_is_not_trained_here(tmp_path: Path) -> None:
    settings = Settings(
        seed_data_dir=seed_folder(tmp_path / "seed", {"cat": 8, "dog": 8}),
        model_base=tmp_path / "models",
        ingest_url="",
        models="catdog",
        eval_fraction=0.3,
        common=CommonSettings(mode="standalone", data_dir=tmp_path / "data"),
    )
    bus, engine = InProcessBus(source="test"), FakeEngine(tmp_path / "models")
    await bus.start()
    app = create_app(settings, bus=bus, registry=FakeRegistry(), engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://trainer") as client,
    ):
        await bus.publish(TrainingRequested(model_name="machine-failure", reason="drift", requested_by="drift"))
        await bus.drain()
        skipped = (await client.get("/v1/trainings")).json()["trainings"]
        await bus.publish(TrainingRequested(model_name="catdog", reason="drift", requested_by="drift"))
        await wait_for(lambda: len(engine.jobs) == 1)
        runs = (await client.get("/v1/trainings")).json()["trainings"]
        metrics = (await client.get("/metrics")).text
    await bus.stop()

    assert skipped == []
    assert [run["model_name"] for run in runs] == ["catdog"]
    assert bus.dead_letters == []
    ignored = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name.startswith("edgeloop_trainer_requests_ignored")
    }
    assert ignored["edgeloop_trainer_requests_ignored_total"] == 1.0
