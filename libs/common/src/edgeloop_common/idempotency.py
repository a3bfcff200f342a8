"""Processed-event records, so a redelivered event has no second effect."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
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
    """The latest ``max_ids_per_group`` processed ids of each consumer group, in memory (a bus's default).

    A redelivery is what was not committed before a rebalance or a crash -- seconds of traffic -- so the latest ids
    are the ones that matter; keeping every id grew without end (the gateway takes thousands of readings a
    second). Forgotten at a restart anyway; a service whose effects must survive that uses
    :class:`SqlProcessedEventStore`.
    """

    def __init__(self, max_ids_per_group: int = 200_000) -> None:
        if max_ids_per_group < 1:
            raise ValueError("max_ids_per_group must be at least 1")
        self.max_ids_per_group = max_ids_per_group
        self._ids: dict[str, OrderedDict[str, None]] = {}

    async def seen(self, group: str, event_id: str) -> bool:
        ids = self._ids.get(group)
        return ids is not None and event_id in ids

    async def mark(self, group: str, event_id: str) -> None:
        ids = self._ids.setdefault(group, OrderedDict())
        ids[event_id] = None
        if len(ids) > self.max_ids_per_group:
            ids.popitem(last=False)  # the oldest


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
