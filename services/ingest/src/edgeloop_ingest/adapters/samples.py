"""Sample records in SQL (PostgreSQL in distributed mode, SQLite standalone), through SQLAlchemy 2.

One row per accepted image, in ``ingest_samples`` (the service's own table in the
shared database). The table has a plain primary key and no label
column on purpose: labels (a later issue) arrive by migration, either as a
nullable ``label`` column or as a ``sample_labels`` table keyed by ``sample_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
)

from edgeloop_ingest.service import SampleRecord

metadata = MetaData()

samples = Table(
    "ingest_samples",
    metadata,
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
    Index("ix_ingest_samples_device_sha256", "device_id", "sha256"),
    Index("ix_ingest_samples_received_at", "received_at"),
)


def create_sql_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _sqlite_pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed sample survives power loss
    cursor.close()


class SqlSampleRepository:
    """Blocking calls: async callers run them in a thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def add_many(self, records: Sequence[SampleRecord]) -> None:
        """Insert ``records`` in one transaction (one commit for a whole batch)."""
        if not records:
            return
        with self.engine.begin() as connection:
            connection.execute(insert(samples), [_row(record) for record in records])

    def get(self, sample_id: str) -> SampleRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(samples).where(samples.c.sample_id == sample_id)).mappings().first()
        return _record(row) if row else None

    def find_recent(self, *, device_id: str, sha256: str, since: datetime) -> SampleRecord | None:
        """The newest sample of ``device_id`` with these bytes received at or after ``since``."""
        query = (
            select(samples)
            .where(samples.c.device_id == device_id, samples.c.sha256 == sha256, samples.c.received_at >= since)
            .order_by(samples.c.received_at.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return _record(row) if row else None

    def reachable(self) -> bool:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True


def _row(record: SampleRecord) -> dict[str, object]:
    return {
        "sample_id": record.sample_id,
        "device_id": record.device_id,
        "site_id": record.site_id,
        "received_at": record.received_at,
        "sha256": record.sha256,
        "size_bytes": record.size_bytes,
        "format": record.format,
        "width": record.width,
        "height": record.height,
        "ingress": record.ingress,
        "mqtt_topic": record.mqtt_topic,
        "blob_uri": record.blob_uri,
    }


def _record(row: object) -> SampleRecord:
    values = dict(row)  # type: ignore[call-overload]
    received_at = values["received_at"]
    if received_at.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
        values["received_at"] = received_at.replace(tzinfo=UTC)
    return SampleRecord(**values)
