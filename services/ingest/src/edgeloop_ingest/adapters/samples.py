"""Sample records in SQL (PostgreSQL in distributed mode, SQLite standalone), through SQLAlchemy 2.

One row per accepted image, in ``ingest_samples`` (the service's own table in the
shared database): the record of the image, then -- written later, by sample id --
the model's prediction (from InferenceCompleted) and a person's label.

The schema is owned by the Alembic migrations in ``edgeloop_ingest/migrations``
(run at start by :data:`edgeloop_ingest.adapters.schema.MIGRATIONS`); the
table below mirrors them for queries, and a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime

from edgeloop_common.sql import create_sql_engine as create_sql_engine  # re-exported; SQLite: WAL, synchronous=FULL
from edgeloop_common.sql import database_reachable
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    and_,
    bindparam,
    false,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edgeloop_ingest.adapters.schema import MIGRATIONS
from edgeloop_ingest.labeling import (
    DeviceSeen,
    Label,
    Prediction,
    PredictionOutcome,
    Sample,
    SampleQuery,
    as_utc,
)
from edgeloop_ingest.service import SampleRecord

metadata = MetaData()

samples = Table(
    "ingest_samples",
    metadata,
    # the image's record (revision 0001)
    Column("sample_id", String(36), primary_key=True),
    Column("device_id", String(64), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("format", String(8), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("ingress", String(8), nullable=False),
    Column("mqtt_topic", String(256), nullable=True),
    Column("blob_uri", String(1024), nullable=False),
    # the newest prediction, from InferenceCompleted (revision 0002)
    Column("predicted_label", String(256), nullable=True),
    Column("confidence", Float, nullable=True),
    Column("scores", JSON, nullable=True),
    Column("model_name", String(256), nullable=True),
    Column("model_version", Integer, nullable=True),
    Column("hard_example", Boolean, nullable=False, server_default=false()),
    Column("hard_example_reason", Text, nullable=True),
    Column("predicted_at", DateTime(timezone=True), nullable=True),
    # a person's label (revision 0002)
    Column("label", String(64), nullable=True),
    Column("labeled_by", String(128), nullable=True),
    Column("labeled_at", DateTime(timezone=True), nullable=True),
    Index("ix_ingest_samples_device_sha256", "device_id", "sha256"),
    Index("ix_ingest_samples_received_at", "received_at"),
    # the listing filters; each ends in the page order (received_at, sample_id)
    Index("ix_ingest_samples_device_received", "device_id", "received_at", "sample_id"),
    Index("ix_ingest_samples_site_received", "site_id", "received_at", "sample_id"),
    Index("ix_ingest_samples_label_received", "label", "received_at", "sample_id"),
    Index("ix_ingest_samples_predicted_received", "predicted_label", "received_at", "sample_id"),
    Index("ix_ingest_samples_confidence", "confidence"),
    # the labeling queue: only unlabeled hard examples are in this (partial) index, so it stays small
    Index(
        "ix_ingest_samples_labeling_queue",
        "received_at",
        "sample_id",
        postgresql_where=text("hard_example = true AND label IS NULL"),
        sqlite_where=text("hard_example = 1 AND label IS NULL"),  # the form SQLAlchemy writes the query in
    ),
)

RECORD_FIELDS = tuple(f.name for f in fields(SampleRecord))
_RECORD_COLUMNS = [samples.c[name] for name in RECORD_FIELDS]
_PAGE_ORDER = (samples.c.received_at, samples.c.sample_id)


class SqlSampleRepository:
    """Blocking calls: async callers run them in a thread. Creating one brings the schema up to date."""

    def __init__(self, engine: Engine, *, upgrade: bool = True) -> None:
        self.engine = engine
        if upgrade:
            MIGRATIONS.upgrade(engine)

    def add_many(self, records: Sequence[SampleRecord]) -> None:
        """Insert ``records`` in one transaction (one commit for a whole batch)."""
        if not records:
            return
        with self.engine.begin() as connection:
            connection.execute(insert(samples), [_row(record) for record in records])

    def add_if_absent(self, record: SampleRecord) -> bool:
        """Insert ``record`` unless a sample with its id is there (an uplink resend); True when inserted."""
        with self.engine.begin() as connection:
            return insert_if_absent(connection, samples, _row(record))

    def get(self, sample_id: str) -> SampleRecord | None:
        query = select(*_RECORD_COLUMNS).where(samples.c.sample_id == sample_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return _record(row) if row else None

    def find_recent(self, *, device_id: str, sha256: str, since: datetime) -> SampleRecord | None:
        """The newest sample of ``device_id`` with these bytes received at or after ``since``."""
        query = (
            select(*_RECORD_COLUMNS)
            .where(samples.c.device_id == device_id, samples.c.sha256 == sha256, samples.c.received_at >= as_utc(since))
            .order_by(samples.c.received_at.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return _record(row) if row else None

    # -- predictions and labels ---------------------------------------------------------------------------------

    def get_sample(self, sample_id: str) -> Sample | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(samples).where(samples.c.sample_id == sample_id)).mappings().first()
        return _sample(row) if row else None

    def record_prediction(self, sample_id: str, prediction: Prediction) -> PredictionOutcome:
        """Store ``prediction`` unless the sample holds a newer one (idempotent: an update by sample id)."""
        at = as_utc(prediction.predicted_at)
        statement = (
            update(samples)
            .where(
                samples.c.sample_id == sample_id,
                or_(samples.c.predicted_at.is_(None), samples.c.predicted_at <= at),
            )
            .values(
                predicted_label=prediction.predicted_label,
                confidence=prediction.confidence,
                scores=prediction.scores,
                model_name=prediction.model_name,
                model_version=prediction.model_version,
                hard_example=prediction.hard_example,
                hard_example_reason=prediction.hard_example_reason,
                predicted_at=at,
            )
        )
        with self.engine.begin() as connection:
            if connection.execute(statement).rowcount:
                return PredictionOutcome.STORED
            exists = connection.execute(select(samples.c.sample_id).where(samples.c.sample_id == sample_id)).first()
        return PredictionOutcome.STALE if exists else PredictionOutcome.UNKNOWN_SAMPLE

    def set_labels(self, labels: Mapping[str, str], *, labeled_by: str, labeled_at: datetime) -> list[Sample]:
        if not labels:
            return []
        statement = (
            update(samples)
            .where(samples.c.sample_id == bindparam("target_id"))
            .values(label=bindparam("new_label"), labeled_by=labeled_by, labeled_at=as_utc(labeled_at))
        )
        ids = list(labels)
        with self.engine.begin() as connection:
            connection.execute(statement, [{"target_id": sid, "new_label": label} for sid, label in labels.items()])
            rows = connection.execute(select(samples).where(samples.c.sample_id.in_(ids))).mappings().all()
        by_id = {row["sample_id"]: _sample(row) for row in rows}
        return [by_id[sid] for sid in ids if sid in by_id]

    def find_samples(self, query: SampleQuery, *, limit: int) -> list[Sample]:
        statement = select(samples).where(*_conditions(query)).order_by(*_PAGE_ORDER).limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [_sample(row) for row in rows]

    def devices(self, *, site_id: str | None, limit: int) -> list[DeviceSeen]:
        c = samples.c
        last = func.max(c.received_at).label("last_received_at")
        statement = select(c.site_id, c.device_id, func.count().label("samples"), last).group_by(c.site_id, c.device_id)
        if site_id is not None:
            statement = statement.where(c.site_id == site_id)
        statement = statement.order_by(last.desc(), c.site_id, c.device_id).limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [DeviceSeen(r["site_id"], r["device_id"], r["samples"], as_utc(r["last_received_at"])) for r in rows]

    def reachable(self) -> bool:
        return database_reachable(self.engine)


def insert_if_absent(connection: Connection, table: Table, row: Mapping[str, object]) -> bool:
    """Insert ``row`` unless its primary key is taken, by a concurrent insert too (``ON CONFLICT DO NOTHING``,
    PostgreSQL and SQLite alike); True when this call inserted it."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    key = list(table.primary_key.columns)
    statement = dialect_insert(table).values(**row).on_conflict_do_nothing(index_elements=key).returning(*key)
    # RETURNING, not rowcount: psycopg reports -1 for this statement
    return connection.execute(statement).first() is not None


def _conditions(query: SampleQuery) -> list[ColumnElement[bool]]:
    c = samples.c
    equal = {
        c.device_id: query.device_id,
        c.site_id: query.site_id,
        c.label: query.label,
        c.predicted_label: query.predicted_label,
        c.hard_example: query.hard_example,
    }
    conditions: list[ColumnElement[bool]] = [column == value for column, value in equal.items() if value is not None]
    if query.labeled is not None:
        conditions.append(c.label.is_not(None) if query.labeled else c.label.is_(None))
    if query.min_confidence is not None:
        conditions.append(c.confidence >= query.min_confidence)
    if query.max_confidence is not None:
        conditions.append(c.confidence <= query.max_confidence)
    if query.since is not None:
        conditions.append(c.received_at >= as_utc(query.since))
    if query.until is not None:
        conditions.append(c.received_at < as_utc(query.until))
    if query.after is not None:
        at = as_utc(query.after.received_at)
        conditions.append(or_(c.received_at > at, and_(c.received_at == at, c.sample_id > query.after.sample_id)))
    return conditions


def _row(record: SampleRecord) -> dict[str, object]:
    row: dict[str, object] = {name: getattr(record, name) for name in RECORD_FIELDS}
    row["received_at"] = as_utc(record.received_at)
    return row


def _record(row: RowMapping) -> SampleRecord:
    values = {name: row[name] for name in RECORD_FIELDS}
    values["received_at"] = as_utc(values["received_at"])  # SQLite returns naive datetimes, stored as UTC
    return SampleRecord(**values)


def _sample(row: RowMapping) -> Sample:
    prediction = None
    if row["predicted_at"] is not None:
        prediction = Prediction(
            predicted_label=row["predicted_label"],
            confidence=row["confidence"],
            scores=dict(row["scores"] or {}),
            model_name=row["model_name"],
            model_version=row["model_version"],
            hard_example=bool(row["hard_example"]),
            hard_example_reason=row["hard_example_reason"],
            predicted_at=as_utc(row["predicted_at"]),
        )
    label = None
    if row["label"] is not None:
        label = Label(label=row["label"], labeled_by=row["labeled_by"], labeled_at=as_utc(row["labeled_at"]))
    return Sample(record=_record(row), prediction=prediction, label=label)
