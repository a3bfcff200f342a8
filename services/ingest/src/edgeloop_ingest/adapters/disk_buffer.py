"""A durable FIFO of events waiting for Kafka: SQLite in WAL mode, ``synchronous=FULL``.

An append commits (and so fsyncs the WAL) before it returns, so the bridge may
acknowledge the device right after it. Rows keep the event id, key and trace
context, so an event re-published from here is the same CloudEvent.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeloop_common.events import EVENTS_BY_TYPE, Event

from edgeloop_ingest.service import Publication


@dataclass(frozen=True)
class BufferedEvent:
    sequence: int
    publication: Publication


class DiskBuffer:
    """Blocking calls, safe from several threads (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS buffered_events ("
            " sequence INTEGER PRIMARY KEY AUTOINCREMENT,"
            " event_id TEXT NOT NULL, event_type TEXT NOT NULL, partition_key TEXT NOT NULL,"
            " traceparent TEXT NOT NULL, body BLOB NOT NULL)"
        )

    def append(self, publications: Sequence[Publication]) -> None:
        """Append in order, durably, in one transaction."""
        rows = [
            (p.event_id, p.event.event_type, p.key, p.traceparent, p.event.model_dump_json().encode())
            for p in publications
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO buffered_events (event_id, event_type, partition_key, traceparent, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def head(self, limit: int) -> list[BufferedEvent]:
        """The oldest ``limit`` events, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, event_id, event_type, partition_key, traceparent, body FROM buffered_events"
                " ORDER BY sequence LIMIT ?",
                (limit,),
            ).fetchall()
        return [self._buffered(*row) for row in rows]

    def remove_through(self, sequence: int) -> None:
        """Delete every event up to and including ``sequence`` (they are in Kafka now)."""
        with self._lock:
            self._db.execute("DELETE FROM buffered_events WHERE sequence <= ?", (sequence,))

    def count(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM buffered_events").fetchone()
        return int(count)

    def writable(self) -> bool:
        with self._lock:
            self._db.execute("SELECT 1").fetchone()
        return self.path.exists()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _buffered(
        sequence: int, event_id: str, event_type: str, key: str, traceparent: str, body: bytes
    ) -> BufferedEvent:
        event_cls: type[Event] = EVENTS_BY_TYPE[event_type]
        event = event_cls.model_validate_json(body)
        publication = Publication(event=event, event_id=event_id, key=key, traceparent=traceparent)
        return BufferedEvent(sequence=sequence, publication=publication)
