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
from dataclasses import fields, replace
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
    Select,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import Label as SqlLabel
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edgeloop_ingest.adapters.schema import MIGRATIONS
from edgeloop_ingest.labeling import (
    ActivityCount,
    ActivityQuery,
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
    Column("served_by", String(8), nullable=True),  # "edge" or "cloud" (revision 0004)
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
    # revision 0004: the listing by who answered, the devices seen, the overview's counts (covering), one site's
    # labeling queue and the queue's count
    Index("ix_ingest_samples_served_received", "served_by", "received_at", "sample_id"),
    Index("ix_ingest_samples_site_device_received", "site_id", "device_id", "received_at"),
    Index("ix_ingest_samples_received_site_labels", "received_at", "site_id", "label", "predicted_label"),
    Index(
        "ix_ingest_samples_site_labeling_queue",
        "site_id",
        "received_at",
        "sample_id",
        postgresql_where=text("hard_example = true AND label IS NULL"),
        sqlite_where=text("hard_example = 1 AND label IS NULL"),
    ),
    Index(  # covering the queue's count (COUNT reads the index alone)
        "ix_ingest_samples_labeling_queue_count",
        "site_id",
        "label",
        "hard_example",
        postgresql_where=text("hard_example = true AND label IS NULL"),
        sqlite_where=text("hard_example = 1 AND label IS NULL"),
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
                served_by=prediction.served_by,
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

    def count_samples(self, query: SampleQuery) -> int:
        statement = select(func.count()).select_from(samples).where(*_conditions(query, paged=False))
        with self.engine.connect() as connection:
            if connection.dialect.name == "sqlite" and _is_queue(query):
                # Without statistics (ingest never runs ANALYZE) SQLite's planner takes the label index for
                # `label IS NULL` and reads every unlabeled row; the queue's covering index counts in well under a
                # millisecond. INDEXED BY makes it use that one, and fails loudly should the index not apply.
                return _count_indexed_by(connection, statement, QUEUE_COUNT_INDEX)
            return int(connection.execute(statement).scalar_one())

    def activity(self, query: ActivityQuery) -> list[ActivityCount]:
        c = samples.c
        bucket = _bucket(self.engine.dialect.name, query.bucket_s)
        answered = and_(c.label.is_not(None), c.predicted_label.is_not(None))
        statement = (
            select(
                c.site_id,
                bucket,
                func.count().label("samples"),
                func.count(case((answered, 1))).label("labeled"),
                func.count(case((and_(answered, c.label == c.predicted_label), 1))).label("correct"),
            )
            .where(c.received_at >= as_utc(query.since), c.received_at < as_utc(query.until))
            .group_by(c.site_id, bucket)
            .order_by(c.site_id, bucket)
        )
        if query.site_id is not None:
            statement = statement.where(c.site_id == query.site_id)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            ActivityCount(site, int(index), int(n), int(labeled), int(correct))
            for site, index, n, labeled, correct in rows
        ]

    def reachable(self) -> bool:
        return database_reachable(self.engine)


def _bucket(dialect: str, bucket_s: int) -> SqlLabel[int]:
    """The time bucket of ``received_at``: whole ``bucket_s`` intervals since the Unix epoch (UTC)."""
    if dialect == "postgresql":
        seconds = func.extract("epoch", samples.c.received_at)
        return cast(func.floor(seconds / bucket_s), BigInteger).label("bucket")
    # SQLite keeps UTC times as text; strftime('%s') reads them as seconds since the epoch (whole seconds)
    return (cast(func.strftime("%s", samples.c.received_at), Integer) // bucket_s).label("bucket")


QUEUE_COUNT_INDEX = "ix_ingest_samples_labeling_queue_count"


def _is_queue(query: SampleQuery) -> bool:
    """The labeling queue (hard examples without a label), of one site or all, and no other filter."""
    queue = SampleQuery(site_id=query.site_id, hard_example=True, labeled=False)
    return replace(query, limit=queue.limit, after=None) == queue


def _count_indexed_by(connection: Connection, statement: Select[tuple[int]], index: str) -> int:
    compiled = statement.compile(connection)
    sql = str(compiled)
    forced = sql.replace(f"FROM {samples.name}", f"FROM {samples.name} INDEXED BY {index}", 1)
    if forced == sql:
        raise RuntimeError(f"no FROM {samples.name} in {sql!r}")
    parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
    return int(connection.exec_driver_sql(forced, parameters).scalar_one())


def insert_if_absent(connection: Connection, table: Table, row: Mapping[str, object]) -> bool:
    """Insert ``row`` unless its primary key is taken, by a concurrent insert too (``ON CONFLICT DO NOTHING``,
    PostgreSQL and SQLite alike); True when this call inserted it."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    key = list(table.primary_key.columns)
    statement = dialect_insert(table).values(**row).on_conflict_do_nothing(index_elements=key).returning(*key)
    # RETURNING, not rowcount: psycopg reports -1 for this statement
    return connection.execute(statement).first() is not None


def _conditions(query: SampleQuery, *, paged: bool = True) -> list[ColumnElement[bool]]:
    c = samples.c
    equal = {
        c.device_id: query.device_id,
        c.site_id: query.site_id,
        c.label: query.label,
        c.predicted_label: query.predicted_label,
        c.served_by: query.served_by,
    }
    conditions: list[ColumnElement[bool]] = [column == value for column, value in equal.items() if value is not None]
    if query.hard_example is not None:
        # a literal, not a bound parameter: SQLite uses the labeling queue's partial index (WHERE hard_example = 1
        # AND label IS NULL) only when the query's terms imply it as written, and `hard_example = ?` does not
        conditions.append(c.hard_example == (true() if query.hard_example else false()))
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
    if paged and query.after is not None:
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
            served_by=row["served_by"],
        )
    label = None
    if row["label"] is not None:
        label = Label(label=row["label"], labeled_by=row["labeled_by"], labeled_at=as_utc(row["labeled_at"]))
    return Sample(record=_record(row), prediction=prediction, label=label)
