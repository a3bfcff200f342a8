"""The trainings table (SQLite standalone, PostgreSQL distributed): runs, the requests they serve, label counts.

Two partial unique indexes hold the queue's rules in the database itself: at
most one ``queued`` run and at most one ``running`` run per model. A request is
keyed by its id (the event id, or the id given to an HTTP request), so a
redelivered event finds its row and changes nothing.

The label follower's count is exact the same way: the ids of the label events
counted are recorded in the transaction that adds them to the count, and the
label that completes a count resets it and records the training request it
decided (``training_label_requests``, under an id derived from that label) in
that same transaction; the request is published from there until it is known
to be out.

The schema is owned by the Alembic migrations in ``edgeloop_trainer/migrations``
(run at start by :data:`edgeloop_trainer.adapters.schema.MIGRATIONS`); the
tables here describe it for the queries, and a test checks the two agree.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from edgeloop_common.sql import aware_utc, database_reachable
from edgeloop_common.sql import create_sql_engine as create_sql_engine  # re-exported; SQLite: WAL, synchronous=FULL
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edgeloop_trainer.adapters.schema import MIGRATIONS
from edgeloop_trainer.ports import Enqueued, LabelTrainingRequest, Run, RunState, TrainingRequest

metadata = MetaData()

trainings = Table(
    "trainings",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("model_name", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("progress", JSON, nullable=False, default=dict),
    Column("snapshot_id", String(64)),
    Column("candidate_version", Integer),
    Column("result", JSON),
    Column("error", Text),
)
Index(
    "trainings_one_queued_per_model",
    trainings.c.model_name,
    unique=True,
    sqlite_where=trainings.c.state == "queued",
    postgresql_where=trainings.c.state == "queued",
)
Index(
    "trainings_one_running_per_model",
    trainings.c.model_name,
    unique=True,
    sqlite_where=trainings.c.state == "running",
    postgresql_where=trainings.c.state == "running",
)
Index("trainings_by_model_created", trainings.c.model_name, trainings.c.created_at)

training_requests = Table(
    "training_requests",
    metadata,
    Column("request_id", String(200), primary_key=True),
    Column("run_id", String(64), ForeignKey("trainings.run_id"), nullable=False, index=True),
    Column("model_name", String(200), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("requested_by", String(200), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("requested_at", DateTime(timezone=True), nullable=False),
)

label_counts = Table(
    "training_label_counts",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("labels_since_request", Integer, nullable=False),
)

counted_labels = Table(
    "training_counted_labels",
    metadata,
    Column("model_name", String(200), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("counted_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("model_name", "event_id"),
)
Index("ix_training_counted_labels_model_counted", counted_labels.c.model_name, counted_labels.c.counted_at)

label_requests = Table(
    "training_label_requests",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("model_name", String(200), nullable=False),
    Column("labels", Integer, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
)

_UPDATABLE = {"state", "started_at", "finished_at", "progress", "snapshot_id", "candidate_version", "result", "error"}


class SqlRunStore:
    """Blocking calls: async callers run them in a thread. Creating one brings the schema up to date
    (``upgrade=False``: as it is, for tests of the migrations)."""

    def __init__(self, engine: Engine, *, upgrade: bool = True) -> None:
        self.engine = engine
        if upgrade:
            MIGRATIONS.upgrade(engine)

    def reachable(self) -> bool:
        return database_reachable(self.engine)

    # -- the queue ---------------------------------------------------------------

    def enqueue(self, request: TrainingRequest, *, attempt: int = 1) -> Enqueued:
        for _ in range(3):  # a concurrent writer may create the queued run between our read and our insert
            try:
                return self._enqueue_once(request, attempt)
            except IntegrityError:
                existing = self._run_of_request(request.request_id)
                if existing is not None:
                    return Enqueued(existing, coalesced=False, duplicate=True)
        raise RuntimeError(f"could not queue training request {request.request_id} (the queue kept changing)")

    def _enqueue_once(self, request: TrainingRequest, attempt: int) -> Enqueued:
        with self.engine.begin() as connection:
            known = connection.execute(
                select(training_requests.c.run_id).where(training_requests.c.request_id == request.request_id)
            ).scalar_one_or_none()
            if known is not None:
                return Enqueued(known, coalesced=False, duplicate=True)
            queued = connection.execute(
                select(trainings.c.run_id, trainings.c.attempt).where(
                    trainings.c.model_name == request.model_name, trainings.c.state == "queued"
                )
            ).first()
            if queued is None:
                run_id = f"run-{uuid.uuid4().hex[:12]}"
                connection.execute(
                    insert(trainings).values(
                        run_id=run_id,
                        model_name=request.model_name,
                        state="queued",
                        attempt=attempt,
                        created_at=request.requested_at,
                        progress={"stage": "queued", "fraction": 0.0, "epoch": 0, "epochs": 0, "message": ""},
                    )
                )
            else:
                run_id = queued.run_id
                if attempt > queued.attempt:
                    connection.execute(update(trainings).where(trainings.c.run_id == run_id).values(attempt=attempt))
            connection.execute(
                insert(training_requests).values(
                    request_id=request.request_id,
                    run_id=run_id,
                    model_name=request.model_name,
                    reason=request.reason,
                    requested_by=request.requested_by,
                    detail=request.detail,
                    requested_at=request.requested_at,
                )
            )
        return Enqueued(run_id, coalesced=queued is not None, duplicate=False)

    def _run_of_request(self, request_id: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(training_requests.c.run_id).where(training_requests.c.request_id == request_id)
            ).scalar_one_or_none()

    def start_next(self, model_name: str, now: datetime) -> Run | None:
        with self.engine.begin() as connection:
            run_id = connection.execute(
                select(trainings.c.run_id).where(trainings.c.model_name == model_name, trainings.c.state == "queued")
            ).scalar_one_or_none()
            if run_id is None:
                return None
            connection.execute(
                update(trainings).where(trainings.c.run_id == run_id).values(state="running", started_at=now)
            )
            return self._read(connection, run_id)

    def queued_models(self) -> list[str]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(trainings.c.model_name).where(trainings.c.state == "queued").distinct())
            return sorted(row.model_name for row in rows)

    # -- runs ----------------------------------------------------------------------

    def update(self, run_id: str, **changes: Any) -> None:
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"not a field of a training run: {sorted(unknown)}")
        with self.engine.begin() as connection:
            connection.execute(update(trainings).where(trainings.c.run_id == run_id).values(**changes))

    def get(self, run_id: str) -> Run | None:
        with self.engine.connect() as connection:
            return self._read(connection, run_id)

    def find(self, *, model_name: str | None = None, state: RunState | None = None, limit: int = 50) -> list[Run]:
        query = select(trainings.c.run_id).order_by(trainings.c.created_at.desc(), trainings.c.run_id).limit(limit)
        if model_name is not None:
            query = query.where(trainings.c.model_name == model_name)
        if state is not None:
            query = query.where(trainings.c.state == state)
        with self.engine.connect() as connection:
            run_ids = connection.execute(query).scalars().all()
            runs = [self._read(connection, run_id) for run_id in run_ids]
        return [run for run in runs if run is not None]

    def _read(self, connection: Connection, run_id: str) -> Run | None:
        row = connection.execute(select(trainings).where(trainings.c.run_id == run_id)).first()
        if row is None:
            return None
        requests = connection.execute(
            select(training_requests)
            .where(training_requests.c.run_id == run_id)
            .order_by(training_requests.c.requested_at, training_requests.c.request_id)
        ).all()
        return Run(
            run_id=row.run_id,
            model_name=row.model_name,
            state=row.state,
            attempt=row.attempt,
            created_at=aware_utc(row.created_at),  # type: ignore[arg-type]
            requests=tuple(
                TrainingRequest(
                    request_id=r.request_id,
                    model_name=r.model_name,
                    reason=r.reason,
                    requested_by=r.requested_by,
                    detail=r.detail,
                    requested_at=aware_utc(r.requested_at),  # type: ignore[arg-type]
                )
                for r in requests
            ),
            started_at=aware_utc(row.started_at),
            finished_at=aware_utc(row.finished_at),
            progress=row.progress or {},
            snapshot_id=row.snapshot_id,
            candidate_version=row.candidate_version,
            result=row.result,
            error=row.error,
        )

    # -- label counts ----------------------------------------------------------------

    def count_label(
        self,
        model_name: str,
        label_event_id: str,
        *,
        every: int,
        request_id: str,
        now: datetime,
        forget_before: datetime,
    ) -> bool:
        for _ in range(3):  # a concurrent writer may create the model's counter between our update and our insert
            try:
                return self._count_label_once(model_name, label_event_id, every, request_id, now, forget_before)
            except IntegrityError:
                if self._counted(model_name, label_event_id):
                    return False  # counted before (by a delivery before this one, or by another replica just now)
        raise RuntimeError(f"could not count label event {label_event_id} for {model_name} (the count kept changing)")

    def _count_label_once(
        self, model_name: str, label_event_id: str, every: int, request_id: str, now: datetime, forget_before: datetime
    ) -> bool:
        with self.engine.begin() as connection:
            # The id first: a label counted before fails here (IntegrityError) and the transaction changes nothing.
            # A write first also takes SQLite's write lock at once, instead of upgrading a read lock later.
            connection.execute(
                insert(counted_labels).values(model_name=model_name, event_id=label_event_id, counted_at=now)
            )
            added = connection.execute(
                update(label_counts)
                .where(label_counts.c.model_name == model_name)
                .values(labels_since_request=label_counts.c.labels_since_request + 1)
            )
            if added.rowcount == 0:
                connection.execute(insert(label_counts).values(model_name=model_name, labels_since_request=1))
            # PostgreSQL: the update holds the counter's row lock until commit, so replicas decide one at a time.
            count = connection.execute(
                select(label_counts.c.labels_since_request).where(label_counts.c.model_name == model_name)
            ).scalar_one()
            if count < every:
                return True
            connection.execute(
                update(label_counts).where(label_counts.c.model_name == model_name).values(labels_since_request=0)
            )
            connection.execute(
                insert(label_requests).values(
                    event_id=request_id, model_name=model_name, labels=count, requested_at=now
                )
            )
            connection.execute(
                delete(counted_labels).where(
                    counted_labels.c.model_name == model_name, counted_labels.c.counted_at < forget_before
                )
            )
        return True

    def _counted(self, model_name: str, label_event_id: str) -> bool:
        with self.engine.connect() as connection:
            return (
                connection.execute(
                    select(counted_labels.c.event_id).where(
                        counted_labels.c.model_name == model_name, counted_labels.c.event_id == label_event_id
                    )
                ).first()
                is not None
            )

    def labels_since_request(self, model_name: str) -> int:
        with self.engine.connect() as connection:
            count = connection.execute(
                select(label_counts.c.labels_since_request).where(label_counts.c.model_name == model_name)
            ).scalar_one_or_none()
        return int(count or 0)

    def label_requests(self) -> list[LabelTrainingRequest]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(label_requests).order_by(
                    label_requests.c.requested_at, label_requests.c.model_name, label_requests.c.event_id
                )
            ).all()
        return [
            LabelTrainingRequest(
                event_id=row.event_id,
                model_name=row.model_name,
                labels=row.labels,
                requested_at=aware_utc(row.requested_at),  # type: ignore[arg-type]
            )
            for row in rows
        ]

    def label_request_published(self, event_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(label_requests).where(label_requests.c.event_id == event_id))

    def reset_labels(self, model_name: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(label_counts).where(label_counts.c.model_name == model_name).values(labels_since_request=0)
            )
