"""The edge store: every picture the agent acknowledged, until the cloud has what it needs of it.

One SQLite file at the edge (WAL, ``synchronous=FULL``: a commit is on disk before the PUBACK goes out). A picture
is a row of ``pictures`` from its acceptance to the cloud's answer to its uplink record:

* accepted   — the picture's bytes are in the row; the device is owed an answer (classified on start-up if the
  agent stopped before answering);
* answered   — the inference is in the row; the picture's bytes stay only if the uplink policy sends them;
* forwarded  — ingest answered ``stored`` or ``duplicate``: the row is deleted.

Rows leave in acceptance order (``position``) per device. The queue is bounded (records, picture bytes): see
:meth:`EdgeStore.enforce_bounds` for what goes first. Blocking calls: the agent runs them in a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgeloop_common.uplink import EdgeInference

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pictures (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    device_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    mqtt_topic TEXT,
    received_at TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    image_bytes INTEGER NOT NULL DEFAULT 0,
    answered INTEGER NOT NULL DEFAULT 0,
    hard INTEGER NOT NULL DEFAULT 0,
    inference TEXT,
    image BLOB  -- last: reading the columns before it never walks the picture's overflow pages
);
-- The queue's size, kept by triggers in the transaction that changes it: checking the bounds after each answer,
-- and /v1/status, cost the same with 10 or 100,000 pictures queued.
CREATE TABLE IF NOT EXISTS queue_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    records INTEGER NOT NULL,
    image_bytes INTEGER NOT NULL,
    unanswered INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS pictures_added AFTER INSERT ON pictures BEGIN
    UPDATE queue_totals SET records = records + 1, image_bytes = image_bytes + NEW.image_bytes,
        unanswered = unanswered + (NEW.answered = 0) WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS pictures_removed AFTER DELETE ON pictures BEGIN
    UPDATE queue_totals SET records = records - 1, image_bytes = image_bytes - OLD.image_bytes,
        unanswered = unanswered - (OLD.answered = 0) WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS pictures_changed AFTER UPDATE OF image_bytes, answered ON pictures BEGIN
    UPDATE queue_totals SET image_bytes = image_bytes - OLD.image_bytes + NEW.image_bytes,
        unanswered = unanswered - (OLD.answered = 0) + (NEW.answered = 0) WHERE id = 1;
END;
CREATE INDEX IF NOT EXISTS pictures_by_state ON pictures (answered, position);
CREATE TABLE IF NOT EXISTS deliveries (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    mqtt_packet_id INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    record_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_packet ON deliveries (mqtt_packet_id, sha256);
CREATE TABLE IF NOT EXISTS set_aside (
    record_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    inference TEXT,
    set_aside_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    mqtt_topic TEXT,
    size_bytes INTEGER NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL
);
"""

# The newest rejected messages kept with their reasons (GET /v1/rejected); a device sending garbage in a loop must
# not fill the edge's disk. Every rejection is counted in edgeloop_edge_pictures_total{outcome="rejected"}.
REJECTED_KEPT = 1000

# How far back (in accepted pictures) a redelivered message is looked for. Smaller than the 65,535 MQTT packet
# ids, so a (packet id, picture) pair found within it is the same message, not a later one reusing the id.
REDELIVERY_WINDOW = 10_000


@dataclass(frozen=True)
class Picture:
    """A picture in the edge store (its bytes only while the agent or the uplink needs them)."""

    position: int
    record_id: str
    device_id: str
    sequence: int
    mqtt_topic: str | None
    received_at: datetime
    sha256: str
    size_bytes: int
    format: str
    width: int
    height: int
    image: bytes | None
    inference: EdgeInference | None = None

    @property
    def hard(self) -> bool:
        return bool(self.inference and self.inference.hard_example)


@dataclass(frozen=True)
class Dropped:
    """What :meth:`EdgeStore.enforce_bounds` let go to stay within the bounds."""

    pictures: int = 0  # pictures no longer sent (their records still travel)
    records: int = 0  # records of pictures that were not hard examples
    hard_records: int = 0  # hard examples' records, only when nothing else was left to drop

    def __bool__(self) -> bool:
        return bool(self.pictures or self.records or self.hard_records)


@dataclass(frozen=True)
class QueueDepth:
    records: int
    image_bytes: int
    unanswered: int
    set_aside: int
    rejected: int


class EdgeStore:
    def __init__(self, path: Path, *, max_records: int, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        with self._transaction() as db:  # the totals from the rows themselves, once at start
            db.execute(
                "INSERT OR REPLACE INTO queue_totals (id, records, image_bytes, unanswered) "
                "SELECT 1, COUNT(*), COALESCE(SUM(image_bytes), 0), COALESCE(SUM(answered = 0), 0) FROM pictures"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- intake ------------------------------------------------------------------------------------------------

    def accept(
        self,
        *,
        device_id: str,
        mqtt_topic: str | None,
        mqtt_packet_id: int = 0,
        image: bytes,
        sha256: str,
        image_format: str,
        width: int,
        height: int,
        redelivered: bool,
    ) -> Picture | None:
        """Store a picture durably; None when it is a message accepted before.

        A message the broker redelivers (``redelivered``: MQTT DUP) with the packet id and the picture of one of
        the recent pictures is that message, accepted before its PUBACK was lost: it is not stored again. (The
        same bytes sent again by a camera that sees the same scene are a new message, with another packet id.)
        The recent deliveries are remembered apart from the pictures, which leave once forwarded.
        """
        with self._transaction() as db:
            if redelivered and mqtt_packet_id:
                row = db.execute(
                    "SELECT record_id FROM deliveries WHERE mqtt_packet_id = ? AND sha256 = ? AND position >= "
                    "(SELECT COALESCE(MAX(position), 0) FROM deliveries) - ? ORDER BY position DESC LIMIT 1",
                    (mqtt_packet_id, sha256, REDELIVERY_WINDOW),
                ).fetchone()
                if row is not None:
                    return None
            last = db.execute("SELECT last_sequence FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            sequence = (last[0] if last else 0) + 1
            db.execute(
                "INSERT INTO devices (device_id, last_sequence) VALUES (?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET last_sequence = excluded.last_sequence",
                (device_id, sequence),
            )
            record_id = str(uuid.uuid4())
            received_at = datetime.now(UTC)
            cursor = db.execute(
                "INSERT INTO pictures (record_id, device_id, sequence, mqtt_topic, received_at, sha256, size_bytes, "
                "format, width, height, image, image_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record_id,
                    device_id,
                    sequence,
                    mqtt_topic,
                    received_at.isoformat(),
                    sha256,
                    len(image),
                    image_format,
                    width,
                    height,
                    image,
                    len(image),
                ),
            )
            position = int(cursor.lastrowid or 0)
            if mqtt_packet_id:
                delivery = db.execute(
                    "INSERT INTO deliveries (mqtt_packet_id, sha256, record_id) VALUES (?, ?, ?)",
                    (mqtt_packet_id, sha256, record_id),
                ).lastrowid
                if delivery and delivery % 1000 == 0:
                    db.execute("DELETE FROM deliveries WHERE position < ?", (delivery - REDELIVERY_WINDOW,))
        return Picture(
            position=position,
            record_id=record_id,
            device_id=device_id,
            sequence=sequence,
            mqtt_topic=mqtt_topic,
            received_at=received_at,
            sha256=sha256,
            size_bytes=len(image),
            format=image_format,
            width=width,
            height=height,
            image=image,
        )

    def reject(self, *, device_id: str, mqtt_topic: str | None, size_bytes: int, reason: str) -> None:
        """Keep the reason a message was not a picture the agent can answer (the edge's dead letters)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO rejected (device_id, mqtt_topic, size_bytes, reason, rejected_at) VALUES (?, ?, ?, ?, ?)",
                (device_id, mqtt_topic, size_bytes, reason, _now()),
            )
            db.execute("DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?", (REJECTED_KEPT,))

    def unanswered(self) -> list[Picture]:
        """Pictures acknowledged and not yet answered (after a restart), in acceptance order."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM pictures WHERE answered = 0 ORDER BY position").fetchall()
        return [_picture(row) for row in rows]

    def answer(self, record_id: str, inference: EdgeInference, *, keep_image: bool) -> None:
        """Record the device's answer; the picture's bytes stay only if its uplink record carries them."""
        with self._transaction() as db:
            db.execute(
                "UPDATE pictures SET answered = 1, hard = ?, inference = ?, "
                "image = CASE WHEN ? THEN image ELSE NULL END, "
                "image_bytes = CASE WHEN ? THEN image_bytes ELSE 0 END WHERE record_id = ?",
                (int(inference.hard_example), inference.model_dump_json(), keep_image, keep_image, record_id),
            )

    def give_up(self, picture: Picture, reason: str) -> None:
        """A picture no model call can classify (the model refused it): out of the queue, with the reason kept."""
        with self._transaction() as db:
            db.execute("DELETE FROM pictures WHERE record_id = ?", (picture.record_id,))
            db.execute(
                "INSERT INTO rejected (device_id, mqtt_topic, size_bytes, reason, rejected_at) VALUES (?, ?, ?, ?, ?)",
                (picture.device_id, picture.mqtt_topic, picture.size_bytes, reason, _now()),
            )

    # -- uplink ------------------------------------------------------------------------------------------------

    def next_to_forward(self, limit: int) -> list[Picture]:
        """Answered pictures in acceptance order, none ahead of an unanswered picture of the same device."""
        with self._lock:
            waiting = dict(
                self._db.execute(
                    "SELECT device_id, MIN(position) FROM pictures WHERE answered = 0 GROUP BY device_id"
                ).fetchall()
            )
            rows = self._db.execute(
                "SELECT * FROM pictures WHERE answered = 1 ORDER BY position LIMIT ?", (limit,)
            ).fetchall()
        return [_picture(row) for row in rows if row["position"] < waiting.get(row["device_id"], 1 << 62)]

    def forwarded(self, record_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM pictures WHERE record_id = ?", (record_id,))

    def set_aside(self, picture: Picture, reason: str) -> None:
        """Ingest refused the record for good (4xx): keep the reason and the inference, out of the queue."""
        with self._transaction() as db:
            db.execute("DELETE FROM pictures WHERE record_id = ?", (picture.record_id,))
            db.execute(
                "INSERT OR REPLACE INTO set_aside (record_id, device_id, reason, inference, set_aside_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    picture.record_id,
                    picture.device_id,
                    reason,
                    picture.inference.model_dump_json() if picture.inference else None,
                    _now(),
                ),
            )

    # -- bounds ------------------------------------------------------------------------------------------------

    def enforce_bounds(self) -> Dropped:
        """Stay within ``max_records`` and ``max_bytes``, keeping the newest and, above all, the hard examples.

        First the pictures of the oldest answered non-hard records stop travelling (their records still go),
        then the oldest answered non-hard records go, and only then the oldest hard examples. Unanswered pictures
        are never dropped: a device is owed their answers.
        """
        pictures = records = hard_records = 0
        with self._transaction() as db:
            count, image_bytes = db.execute("SELECT records, image_bytes FROM queue_totals").fetchone()
            while image_bytes > self.max_bytes:
                row = db.execute(
                    "SELECT position, image_bytes FROM pictures WHERE answered = 1 AND hard = 0 AND image_bytes > 0 "
                    "ORDER BY position LIMIT 1"
                ).fetchone()
                if row is None:
                    break
                db.execute("UPDATE pictures SET image = NULL, image_bytes = 0 WHERE position = ?", (row[0],))
                image_bytes -= row[1]
                pictures += 1
            for hard in (0, 1):
                while count > self.max_records or image_bytes > self.max_bytes:
                    row = db.execute(
                        "SELECT position, image_bytes FROM pictures WHERE answered = 1 AND hard = ? "
                        "ORDER BY position LIMIT 1",
                        (hard,),
                    ).fetchone()
                    if row is None:
                        break
                    db.execute("DELETE FROM pictures WHERE position = ?", (row[0],))
                    count -= 1
                    image_bytes -= row[1]
                    if hard:
                        hard_records += 1
                    else:
                        records += 1
        return Dropped(pictures=pictures, records=records, hard_records=hard_records)

    def depth(self) -> QueueDepth:
        with self._lock:
            records, image_bytes, unanswered = self._db.execute(
                "SELECT records, image_bytes, unanswered FROM queue_totals"
            ).fetchone()
            set_aside = self._db.execute("SELECT COUNT(*) FROM set_aside").fetchone()[0]
            rejected = self._db.execute("SELECT COUNT(*) FROM rejected").fetchone()[0]
        return QueueDepth(
            records=records, image_bytes=image_bytes, unanswered=unanswered, set_aside=set_aside, rejected=rejected
        )

    def rejected(self, limit: int = 100) -> list[dict[str, object]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM rejected ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(row) for row in rows]

    def set_aside_records(self, limit: int = 100) -> list[dict[str, object]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record_id, device_id, reason, set_aside_at FROM set_aside ORDER BY set_aside_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [dict(row) for row in rows]


def _picture(row: sqlite3.Row) -> Picture:
    return Picture(
        position=row["position"],
        record_id=row["record_id"],
        device_id=row["device_id"],
        sequence=row["sequence"],
        mqtt_topic=row["mqtt_topic"],
        received_at=datetime.fromisoformat(row["received_at"]),
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        format=row["format"],
        width=row["width"],
        height=row["height"],
        image=row["image"],
        inference=EdgeInference.model_validate_json(row["inference"]) if row["inference"] else None,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
