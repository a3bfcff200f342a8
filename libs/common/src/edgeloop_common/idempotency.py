"""Processed-event records, so a redelivered event has no second effect."""

from __future__ import annotations

import asyncio
from typing import Protocol

from sqlalchemy import Column, DateTime, MetaData, String, Table, create_engine, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

processed_events_metadata = MetaData()

processed_events = Table(
    "processed_events",
    processed_events_metadata,
    Column("consumer_group", String(200), primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("processed_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


class ProcessedEventStore(Protocol):
    async def seen(self, group: str, event_id: str) -> bool: ...

    async def mark(self, group: str, event_id: str) -> None: ...


class InMemoryProcessedEventStore:
    def __init__(self) -> None:
        self._ids: set[tuple[str, str]] = set()

    async def seen(self, group: str, event_id: str) -> bool:
        return (group, event_id) in self._ids

    async def mark(self, group: str, event_id: str) -> None:
        self._ids.add((group, event_id))


class SqlProcessedEventStore:
    """Processed-event ids in a SQL table (PostgreSQL or SQLite)."""

    def __init__(self, engine: Engine | str) -> None:
        self.engine = create_engine(engine) if isinstance(engine, str) else engine
        processed_events_metadata.create_all(self.engine)

    def _seen(self, group: str, event_id: str) -> bool:
        query = select(processed_events.c.event_id).where(
            processed_events.c.consumer_group == group, processed_events.c.event_id == event_id
        )
        with self.engine.connect() as connection:
            return connection.execute(query).first() is not None

    def _mark(self, group: str, event_id: str) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(processed_events).values(consumer_group=group, event_id=event_id))
        except IntegrityError:
            pass  # already recorded by an earlier delivery: that is the point

    async def seen(self, group: str, event_id: str) -> bool:
        return await asyncio.to_thread(self._seen, group, event_id)

    async def mark(self, group: str, event_id: str) -> None:
        await asyncio.to_thread(self._mark, group, event_id)
