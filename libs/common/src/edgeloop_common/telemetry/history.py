"""A site's sensor history, kept where it was measured (docs/telemetry.md, "What stays where").

The edge agent appends every reading its site's sensors publish; the site's federated-learning client reads its
training windows from here. The raw readings never leave the site: only model weights and evaluation counts do.

One SQLite file (WAL), one row per reading, in arrival order per device.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path

from edgeloop_common.telemetry.features import (
    HORIZON_READINGS,
    WINDOW_READINGS,
    LabelledWindows,
    Reading,
    concatenate,
    labelled_windows,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    measured_at TEXT,
    readings TEXT NOT NULL,
    machine_event TEXT
);
CREATE INDEX IF NOT EXISTS readings_by_device ON readings (site_id, device_id, seq);
"""


class SiteHistory:
    """The readings of one site's devices (thread-safe; one connection)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(
        self,
        site_id: str,
        device_id: str,
        readings: Mapping[str, object],
        *,
        measured_at: datetime | None = None,
        machine_event: str | None = None,
    ) -> None:
        row = (site_id, device_id, measured_at.isoformat() if measured_at else None, json.dumps(dict(readings)))
        with self._lock:
            self._db.execute(
                "INSERT INTO readings (site_id, device_id, measured_at, readings, machine_event) VALUES (?,?,?,?,?)",
                (*row, machine_event),
            )

    def append_many(self, rows: Iterable[tuple[str, str, datetime | None, Mapping[str, object], str | None]]) -> int:
        """Append ``(site_id, device_id, measured_at, readings, machine_event)`` rows in one transaction."""
        values = [
            (site, device, at.isoformat() if at else None, json.dumps(dict(readings)), event)
            for site, device, at, readings, event in rows
        ]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO readings (site_id, device_id, measured_at, readings, machine_event) "
                    "VALUES (?,?,?,?,?)",
                    values,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(values)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM readings").fetchone()[0])

    def devices(self) -> list[tuple[str, str]]:
        with self._lock:
            return [tuple(row) for row in self._db.execute("SELECT DISTINCT site_id, device_id FROM readings")]

    def device_history(self, site_id: str, device_id: str) -> Iterator[Reading]:
        with self._lock:
            rows = self._db.execute(
                "SELECT readings, machine_event FROM readings WHERE site_id = ? AND device_id = ? ORDER BY seq",
                (site_id, device_id),
            ).fetchall()
        for readings, machine_event in rows:
            yield Reading(json.loads(readings), machine_event)

    def training_windows(
        self, *, window: int = WINDOW_READINGS, horizon: int = HORIZON_READINGS, stride: int = 5
    ) -> LabelledWindows:
        """Every device's labelled windows (``features.labelled_windows``), devices in a fixed order."""
        return concatenate(
            labelled_windows(list(self.device_history(site, device)), window=window, horizon=horizon, stride=stride)
            for site, device in sorted(self.devices())
        )
