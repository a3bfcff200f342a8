"""The kept dead letters in SQL (``ingest_dead_letters``; schema: migration 0005), the newest
:data:`~edgeloop_ingest.dead_letters.KEPT`."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edgeloop_ingest.adapters.samples import metadata
from edgeloop_ingest.dead_letters import KEPT, KeptDeadLetter
from edgeloop_ingest.labeling import as_utc

dead_letters = Table(
    "ingest_dead_letters",
    metadata,
    Column("position", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("service", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("error_type", String(128), nullable=False),
    Column("original_topic", String(256), nullable=False),
    Column("site_id", String(64), nullable=True),
    Column("device_id", String(64), nullable=True),
    Column("mqtt_topic", String(256), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False),
    Index("ix_ingest_dead_letters_site_position", "site_id", "position"),
)


class SqlDeadLetterRepository:
    """Blocking calls (async callers use a thread); the schema is upgraded with the samples' migrations."""

    def __init__(self, engine: Engine, *, kept: int = KEPT) -> None:
        self.engine = engine
        self.kept = kept

    def add(self, letter: KeptDeadLetter) -> bool:
        row = {  # text clipped to its column: a dead letter is about bad input, and is kept whatever it holds
            "event_id": letter.event_id,
            "service": letter.service[:128],
            "reason": letter.reason,
            "error_type": letter.error_type[:128],
            "original_topic": letter.original_topic[:256],
            "site_id": _clipped(letter.site_id, 64),
            "device_id": _clipped(letter.device_id, 64),
            "mqtt_topic": _clipped(letter.mqtt_topic, 256),
            "attempts": letter.attempts,
            "size_bytes": letter.size_bytes,
            "failed_at": as_utc(letter.failed_at),
        }
        c = dead_letters.c
        with self.engine.begin() as connection:
            inserted = _insert_unless_kept(connection, row)
            if inserted:  # the newest `kept` stay
                newest = select(func.max(c.position)).scalar_subquery()
                connection.execute(delete(dead_letters).where(c.position <= newest - self.kept))
        return inserted

    def newest(self, *, site_id: str | None, limit: int) -> list[KeptDeadLetter]:
        c = dead_letters.c
        query = select(dead_letters).order_by(c.position.desc()).limit(limit)
        if site_id is not None:
            query = query.where(c.site_id == site_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            KeptDeadLetter(
                event_id=row.event_id,
                service=row.service,
                reason=row.reason,
                error_type=row.error_type,
                original_topic=row.original_topic,
                site_id=row.site_id,
                device_id=row.device_id,
                mqtt_topic=row.mqtt_topic,
                attempts=row.attempts,
                size_bytes=row.size_bytes,
                failed_at=as_utc(row.failed_at),
            )
            for row in rows
        ]

    def count(self, *, site_id: str | None) -> int:
        query = select(func.count()).select_from(dead_letters)
        if site_id is not None:
            query = query.where(dead_letters.c.site_id == site_id)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())


def _insert_unless_kept(connection: Connection, row: dict[str, object]) -> bool:
    """Insert unless the event id is kept (a redelivered dead letter, or a concurrent copy): ON CONFLICT DO NOTHING."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = (
        dialect_insert(dead_letters)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(dead_letters.c.position)
    )
    return connection.execute(statement).first() is not None


def _clipped(text: str | None, length: int) -> str | None:
    return text[:length] if text else None
