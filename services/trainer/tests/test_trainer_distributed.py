"""Distributed mode: the trainer's own Kafka bus and its trainings table on PostgreSQL (real brokers).

The registry and the engine are fakes here (they are exercised for real in
test_trainer_integration.py); what is under test is the wiring: events from
Kafka become durable runs in PostgreSQL, the label count publishes to Kafka,
and the queue's rules hold in PostgreSQL under concurrent writers.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import BlobRef, SampleLabeled, TrainingRequested
from edgeloop_common.settings import CommonSettings
from edgeloop_trainer.adapters.runs import SqlRunStore, create_sql_engine
from edgeloop_trainer.app import create_app
from edgeloop_trainer.ports import TrainingRequest
from edgeloop_trainer.settings import Settings
from sqlalchemy import create_engine, text
from trainer_testing import FakeEngine, FakeRegistry, seed_folder, wait_for

from tests.helpers import delete_topics

pytestmark = [pytest.mark.postgres]


def test_concurrent_requests_make_exactly_one_queued_run_in_postgres(fresh_postgres_url: str) -> None:
    engine = create_sql_engine(fresh_postgres_url)
    store = SqlRunStore(engine)
    requests = [TrainingRequest(f"event-{i}", "catdog", "drift", "test", "", datetime.now(UTC)) for i in range(12)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(store.enqueue, [*requests, requests[0]]))
    running = store.start_next("catdog", datetime.now(UTC))
    after = store.enqueue(TrainingRequest("event-late", "catdog", "manual", "test", "", datetime.now(UTC)))
    engine.dispose()

    assert len({outcome.run_id for outcome in outcomes}) == 1
    assert sum(not outcome.coalesced and not outcome.duplicate for outcome in outcomes) == 1
    assert outcomes[-1].duplicate
    assert running is not None and len(running.requests) == 12 and running.state == "running"
    assert after.run_id != running.run_id and not after.coalesced


@pytest.mark.kafka
async def test_events_from_kafka_become_runs_in_postgres(
    fresh_postgres_url: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        seed_data_dir=seed_folder(tmp_path / "seed", {"cat": 8, "dog": 8}),
        ingest_url="",
        models="catdog",
        retrain_every_labels=2,
        eval_fraction=0.3,
        common=CommonSettings(
            mode="distributed",
            topic_prefix=topic_prefix,
            kafka_bootstrap_servers=kafka_bootstrap,
            database_url=fresh_postgres_url,
            data_dir=tmp_path / "data",
        ),
    )
    registry, engine = FakeRegistry(), FakeEngine(tmp_path / "models")
    app = create_app(settings, registry=registry, engine=engine)
    others = KafkaBus(bootstrap_servers=kafka_bootstrap, source="drift", topic_prefix=topic_prefix)
    seen: list[TrainingRequested] = []

    async def record(event: TrainingRequested, _context: object) -> None:
        seen.append(event)

    others.subscribe(TrainingRequested, record, group=f"observer-{uuid.uuid4().hex[:6]}")
    await others.start()
    try:
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://trainer")
            await others.publish(TrainingRequested(model_name="catdog", reason="drift", requested_by="drift"))

            async def first_run_done() -> bool:
                runs = (await client.get("/v1/trainings")).json()["trainings"]
                return len(runs) == 1 and runs[0]["state"] == "succeeded"

            # Labels count towards the *next* snapshot: the counter restarts when a run takes its snapshot,
            # so publish them once the drift run is done.
            await wait_for(first_run_done, timeout_s=60)
            image = BlobRef(sha256="a" * 64, uri="file:///x", content_type="image/jpeg", size_bytes=1)
            for index in range(2):
                await others.publish(
                    SampleLabeled(
                        sample_id=f"s{index}", device_id="d", site_id="site-a", image=image, label="cat", labeled_by="b"
                    )
                )

            async def two_runs_done() -> bool:
                runs = (await client.get("/v1/trainings")).json()["trainings"]
                return len(runs) == 2 and all(run["state"] == "succeeded" for run in runs)

            await wait_for(two_runs_done, timeout_s=60)
            runs = (await client.get("/v1/trainings")).json()["trainings"]
            await wait_for(lambda: len(seen) == 2, timeout_s=30)
            await client.aclose()
    finally:
        await others.stop()
        await delete_topics(kafka_bootstrap, topic_prefix)

    reasons = sorted(request["reason"] for run in runs for request in run["requests"])
    assert reasons == ["drift", "new_labels"]
    assert sorted((event.reason, event.requested_by) for event in seen) == [
        ("drift", "drift"),
        ("new_labels", "trainer"),
    ]
    assert sorted(registry.versions["catdog"]) == [1, 2]
    check = create_engine(fresh_postgres_url)
    with check.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM trainings WHERE state = 'succeeded'")).scalar_one()
    check.dispose()
    assert stored == 2
