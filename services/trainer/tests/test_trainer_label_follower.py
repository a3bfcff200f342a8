"""The label follower under redelivery, on the real databases (SQLite, and PostgreSQL in a schema of its own): a
label event delivered again is not counted again, a crash between publishing the TrainingRequested and recording
it publishes the same event (same id) again, which the trainer's own consumer skips, and the counted ids are
forgotten after their retention."""

from __future__ import annotations

import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from edgeloop_common.bus import EventContext
from edgeloop_common.events import SampleLabeled, TrainingRequested
from edgeloop_trainer.adapters.runs import SqlRunStore, counted_labels, create_sql_engine
from edgeloop_trainer.handlers import TrainerHandlers
from edgeloop_trainer.service import COUNTED_LABELS_KEPT, TrainerConfig, TrainerService, label_request_id
from sqlalchemy import select
from trainer_testing import make_service, seed_folder

MODEL = "catdog"
START = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


class Killed(BaseException):
    """The process dies here (SIGKILL): nothing after this point runs, nothing catches it."""


class BusLog:
    """Every TrainingRequested that reached Kafka with the id it went out under: the given one, or a fresh one as
    the bus gives an event published without one. ``die`` kills the process just before or just after a publish."""

    def __init__(self) -> None:
        self.events: list[tuple[TrainingRequested, str]] = []
        self.die: str | None = None  # "before" or "after" the next publish

    def publisher(self) -> _Publisher:
        return _Publisher(self)


class _Publisher:
    def __init__(self, log: BusLog) -> None:
        self.log = log

    async def __call__(self, event: TrainingRequested, event_id: str | None = None) -> str:
        die, self.log.die = self.log.die, None
        if die == "before":
            raise Killed
        published = event_id or str(uuid.uuid4())
        self.log.events.append((event, published))
        if die == "after":
            raise Killed
        return published


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    return seed_folder(tmp_path / "seed", {"cat": 8, "dog": 8})


def start_trainer(tmp_path: Path, database: str, bus: BusLog, seed: Path, *, every: int = 3) -> TrainerService:
    """A trainer process on the given database; a second call is the same trainer started again."""
    config = TrainerConfig(seed_data_dir=seed, retrain_every_labels=every, label_models=(MODEL,))
    return make_service(tmp_path, publish=bus.publisher(), config=config, database=database)


def labeled(event_id: str) -> tuple[SampleLabeled, EventContext]:
    """A delivery of the SampleLabeled event ``event_id`` (a redelivery is the same event, the same id)."""
    event = SampleLabeled.model_validate(
        {
            "sample_id": f"sample-{event_id}",
            "device_id": "camera-1",
            "site_id": "site-a",
            "image": {"sha256": "0" * 64, "uri": "file:///x", "content_type": "image/jpeg", "size_bytes": 1},
            "label": "cat",
            "labeled_by": "bob",
        }
    )
    context = EventContext(
        event_id=event_id, event_type=SampleLabeled.event_type, source="ingest", time=START, topic=SampleLabeled.topic
    )
    return event, context


def requested(event_id: str) -> EventContext:
    return EventContext(
        event_id=event_id,
        event_type=TrainingRequested.event_type,
        source="trainer",
        time=START,
        topic=TrainingRequested.topic,
    )


async def test_a_label_event_delivered_twice_is_counted_once(
    sqlite_or_postgres_url: str, tmp_path: Path, seed: Path
) -> None:
    bus = BusLog()
    trainer = TrainerHandlers(start_trainer(tmp_path, sqlite_or_postgres_url, bus, seed))

    for event_id in ("label-1", "label-1", "label-2", "label-2"):
        await trainer.on_sample_labeled(*labeled(event_id))
    assert trainer.service.runs.labels_since_request(MODEL) == 2
    assert bus.events == []

    # the process crashed before the bus recorded label-2 processed: the restarted trainer gets it again
    trainer = TrainerHandlers(start_trainer(tmp_path, sqlite_or_postgres_url, bus, seed))
    await trainer.on_sample_labeled(*labeled("label-2"))
    assert trainer.service.runs.labels_since_request(MODEL) == 2 and bus.events == []

    await trainer.on_sample_labeled(*labeled("label-3"))
    await trainer.on_sample_labeled(*labeled("label-3"))
    assert [(e.reason, e.detail) for e, _ in bus.events] == [("new_labels", "3 new labels since the last training")]
    assert trainer.service.runs.labels_since_request(MODEL) == 0


@pytest.mark.parametrize("die", ["after", "before"])
async def test_a_crash_at_the_publish_of_a_training_request_gives_one_event_id(
    sqlite_or_postgres_url: str, tmp_path: Path, seed: Path, die: str
) -> None:
    bus = BusLog()
    trainer = TrainerHandlers(start_trainer(tmp_path, sqlite_or_postgres_url, bus, seed))
    await trainer.on_sample_labeled(*labeled("label-1"))
    await trainer.on_sample_labeled(*labeled("label-2"))

    bus.die = die  # label-3 completes the count; the process dies just before, or just after, Kafka has the request
    with pytest.raises(Killed):
        await trainer.on_sample_labeled(*labeled("label-3"))

    # Restarted: label-3 was not recorded processed, so it comes again; then the labels go on.
    trainer = TrainerHandlers(start_trainer(tmp_path, sqlite_or_postgres_url, bus, seed))
    await trainer.on_sample_labeled(*labeled("label-3"))
    await trainer.on_sample_labeled(*labeled("label-4"))

    assert {event_id for _, event_id in bus.events} == {label_request_id(MODEL, "label-3")}
    assert len(bus.events) == (2 if die == "after" else 1)
    assert len({event.model_dump_json() for event, _ in bus.events}) == 1  # the same event, not only the same id
    assert trainer.service.runs.labels_since_request(MODEL) == 1  # label-4, counted from the reset
    assert trainer.service.runs.label_requests() == []

    # The trainer's own consumer of TrainingRequested skips the copy by its id: one training, asked once.
    for event, event_id in bus.events:
        await trainer.on_training_requested(event, requested(event_id))
    await trainer.service.wait_idle()
    runs = await trainer.service.list_runs(model_name=MODEL, state=None, limit=10)
    assert [[r.request_id for r in run.requests] for run in runs] == [[label_request_id(MODEL, "label-3")]]


async def test_counted_ids_are_forgotten_after_their_retention_when_a_count_asks_for_training(
    sqlite_or_postgres_url: str, tmp_path: Path, seed: Path
) -> None:
    bus = BusLog()
    service = start_trainer(tmp_path, sqlite_or_postgres_url, bus, seed)
    now = START
    service.clock = lambda: now

    await service.count_label("label-old")
    now = START + COUNTED_LABELS_KEPT - timedelta(minutes=1)
    await service.count_label("label-recent")
    now = START + COUNTED_LABELS_KEPT + timedelta(minutes=1)
    await service.count_label("label-3")  # completes the count: what was counted before the retention is forgotten

    assert len(bus.events) == 1
    with service.runs.engine.connect() as connection:  # type: ignore[attr-defined]
        kept = set(connection.execute(select(counted_labels.c.event_id)).scalars())
    assert kept == {"label-recent", "label-3"}
    await service.count_label("label-3")  # still known: not counted again
    assert service.runs.labels_since_request(MODEL) == 0


def test_replicas_counting_the_same_labels_together_count_each_once(sqlite_or_postgres_url: str) -> None:
    """Three replicas (an engine each) count the same 30 label events at once, each in its own order: 30 labels,
    3 requests (one per 10), each decided once."""
    labels = [f"label-{n}" for n in range(30)]
    engines = [create_sql_engine(sqlite_or_postgres_url) for _ in range(3)]
    SqlRunStore(engines[0])  # the schema, upgraded once before the replicas start
    stores = [SqlRunStore(engine, upgrade=False) for engine in engines]
    start = threading.Barrier(len(stores))

    def replica(store: SqlRunStore, seed: int) -> int:
        start.wait(timeout=30)
        return sum(
            store.count_label(
                MODEL,
                label,
                every=10,
                request_id=label_request_id(MODEL, label),
                now=START,
                forget_before=START - COUNTED_LABELS_KEPT,
            )
            for label in random.Random(seed).sample(labels, len(labels))
        )

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            counted = [
                future.result(timeout=120) for future in [pool.submit(replica, s, n) for n, s in enumerate(stores)]
            ]
        assert sum(counted) == len(labels)
        assert len(stores[0].label_requests()) == 3
        assert {request.labels for request in stores[0].label_requests()} == {10}
        assert stores[0].labels_since_request(MODEL) == 0
    finally:
        for engine in engines:
            engine.dispose()
