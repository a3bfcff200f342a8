"""Sensor telemetry at the edge (docs/telemetry.md, "Scoring at the edge"): the site's readings stay here.

``dt/edgeloop/{site}/+/telemetry`` -> checked as ingest checks it (``edgeloop_common.telemetry.messages``; a
message that fails is kept with its reason in the rejected list, GET /v1/rejected) -> appended to the site's
``SiteHistory`` (what its federated-learning client trains on) and only then acknowledged to the broker -> scored
by the node group's model server (``edgeloop_common.telemetry.scoring``, shared with the gateway) -> the alert
to the device on the site broker (``dt/edgeloop/{site}/{device}/alert``) -> the scores and alerts, a batch per
record, queued in SQLite (:class:`ScoredOutbox`) and forwarded to ingest's ``POST /v1/uplink``
(:class:`ScoredTelemetryForwarder`). No raw reading crosses the uplink: a ``ScoredTelemetryRecord`` carries only
``TelemetryScored`` (a window's 25 features and its probability) and ``MaintenanceAlert`` events.

Readings are taken in bursts (up to ``INTAKE_BURST`` messages): one SQLite transaction for the burst, then the
burst's acknowledgements, then the scorer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
from edgeloop_common.mqtt_asyncio import ReceivedMessage
from edgeloop_common.telemetry.history import SiteHistory
from edgeloop_common.telemetry.messages import InvalidTelemetryError, TelemetryMessage, parse_telemetry_samples
from edgeloop_common.telemetry.scoring import ScoredReading, TelemetryScorer
from edgeloop_common.topics import MQTT_ALERT, mqtt_topic, parse_device_topic
from edgeloop_common.uplink import RECORD_PART, UPLINK_PATH, ScoredTelemetryRecord, UplinkAnswer

from edgeloop_edge.metrics import EdgeMetrics
from edgeloop_edge.store import EdgeStore

log = logging.getLogger(__name__)

INTAKE_BURST = 512
FORWARD_IDLE_POLL_S = 0.5
FIRST_BACKOFF_S = 0.25

SendAlert = Callable[[str, bytes], Awaitable[None]]


class ScoredOutbox:
    """Scored batches waiting for the uplink (SQLite, WAL): one row per ``ScoredTelemetryRecord``, in order.

    At most ``max_records`` rows: past that the oldest are let go (counted), so a long outage cannot fill the disk.
    """

    def __init__(self, path: Path, *, max_records: int = 20_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_records = max_records
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # scores are at most once anyway; a power cut may lose the last
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scored_outbox (sequence INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, site_id: str, scored: Sequence[ScoredReading]) -> int:
        """Queue one record of ``scored``; returns how many old records were let go to stay within the bound."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # AUTOINCREMENT's high-water mark: the sequence never goes back, even after the rows left.
                last = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'scored_outbox'").fetchone()
                sequence = (int(last[0]) if last else 0) + 1
                record = ScoredTelemetryRecord(
                    record_id=str(uuid.uuid4()),
                    site_id=site_id,
                    sequence=sequence,
                    created_at=datetime.now(UTC),
                    scored=[reading.scored for reading in scored],
                    alerts=[reading.alert for reading in scored if reading.alert is not None],
                )
                self._db.execute(
                    "INSERT INTO scored_outbox (sequence, body) VALUES (?, ?)", (sequence, record.model_dump_json())
                )
                dropped = self._db.execute(
                    "DELETE FROM scored_outbox WHERE sequence <= ?", (sequence - self.max_records,)
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(dropped)

    def next(self, limit: int = 16) -> list[tuple[int, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, body FROM scored_outbox ORDER BY sequence LIMIT ?", (limit,)
            ).fetchall()
        return [(int(sequence), str(body)) for sequence, body in rows]

    def remove(self, sequence: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM scored_outbox WHERE sequence = ?", (sequence,))

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM scored_outbox").fetchone()[0])


class EdgeTelemetry:
    def __init__(
        self,
        site_id: str,
        *,
        history: SiteHistory,
        store: EdgeStore,
        outbox: ScoredOutbox,
        metrics: EdgeMetrics,
        send_alert: SendAlert,
        max_bytes: int = 64 * 1024,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.site_id = site_id
        self.history = history
        self.store = store
        self.outbox = outbox
        self.metrics = metrics
        self.send_alert = send_alert
        self.max_bytes = max_bytes
        self.on_queued = on_queued or (lambda: None)
        self.scorer: TelemetryScorer | None = None  # set by the app (its emit is this object's ``emit``)
        self._intake: asyncio.Queue[ReceivedMessage] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._take(), name="edge-telemetry-intake")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def on_message(self, message: ReceivedMessage) -> None:
        """The MQTT driver's callback for a telemetry topic (on the event loop, in arrival order)."""
        self._intake.put_nowait(message)

    @property
    def waiting(self) -> int:
        return self._intake.qsize()

    async def _take(self) -> None:
        while True:
            burst = [await self._intake.get()]
            while len(burst) < INTAKE_BURST and not self._intake.empty():
                burst.append(self._intake.get_nowait())
            try:
                await self._accept(burst)
            except Exception:  # never stop taking readings; these stay unacknowledged and come back
                log.exception("could not take %d telemetry messages; the broker will send them again", len(burst))

    async def _accept(self, burst: list[ReceivedMessage]) -> None:
        accepted: list[tuple[str, TelemetryMessage]] = []
        rejected: list[tuple[ReceivedMessage, str, str]] = []
        for message in burst:
            where = parse_device_topic(message.topic)
            if where is None or where.kind != "telemetry" or where.site_id != self.site_id:
                rejected.append((message, "unknown", f"not a telemetry topic of site {self.site_id!r}"))
                continue
            try:
                samples = parse_telemetry_samples(message.payload, max_bytes=self.max_bytes)  # one, or a batch
                accepted.extend((where.device_id, sample) for sample in samples)
            except InvalidTelemetryError as exc:
                rejected.append((message, where.device_id, f"{exc.code}: {exc.reason}"))
        if accepted:
            now = datetime.now(UTC)
            rows = [
                (self.site_id, device, reading.measured_at or now, reading.readings, reading.machine_event)
                for device, reading in accepted
            ]
            await asyncio.to_thread(self.history.append_many, rows)  # durable at the site before the broker forgets
        for message, device_id, reason in rejected:
            log.warning("rejected telemetry on %s: %s", message.topic, reason)
            await asyncio.to_thread(
                self.store.reject,
                device_id=device_id,
                mqtt_topic=message.topic,
                size_bytes=len(message.payload),
                reason=reason,
            )
        for message in burst:
            message.ack()
        self.metrics.telemetry_readings.labels(outcome="rejected").inc(len(rejected))
        self.metrics.telemetry_readings.labels(outcome="accepted").inc(len(accepted))
        if self.scorer is None:
            return
        for device, reading in accepted:
            await self.scorer.add(
                self.site_id,
                device,
                reading.readings,
                measured_at=reading.measured_at,
                machine_event=reading.machine_event,
            )

    async def emit(self, scored: Sequence[ScoredReading]) -> None:
        """The scorer's output: alerts to the devices on the site broker, scores and alerts into the outbox."""
        dropped = await asyncio.to_thread(self.outbox.add, self.site_id, scored)
        if dropped:
            self.metrics.uplink_dropped.labels(what="scored_telemetry").inc(dropped)
        self.on_queued()
        for reading in scored:
            if reading.alert is not None:
                topic = mqtt_topic(MQTT_ALERT, site=self.site_id, device=reading.alert.device_id)
                await self.send_alert(topic, reading.alert.model_dump_json().encode())
        self.metrics.telemetry_scored.inc(len(scored))
        self.metrics.maintenance_alerts.inc(sum(1 for reading in scored if reading.alert is not None))


class ScoredTelemetryForwarder:
    """The outbox's records to ingest's ``POST /v1/uplink``, in order, each until ingest has it (stored or
    duplicate); a record ingest refuses (4xx) is let go with the reason logged and counted."""

    def __init__(
        self,
        outbox: ScoredOutbox,
        *,
        ingest_url: str,
        metrics: EdgeMetrics,
        timeout_s: float = 10.0,
        retry_max_s: float = 10.0,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.outbox = outbox
        self.ingest_url = ingest_url.rstrip("/")
        self.metrics = metrics
        self.retry_max_s = retry_max_s
        self._http = httpx.AsyncClient(timeout=timeout_s, auth=auth)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="edge-scored-telemetry-uplink")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while True:
            batch = await asyncio.to_thread(self.outbox.next)
            if not batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), FORWARD_IDLE_POLL_S)
                continue
            for sequence, body in batch:
                if not await self._forward(sequence, body):
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.retry_max_s)
                    break
                backoff = FIRST_BACKOFF_S

    async def _forward(self, sequence: int, body: str) -> bool:
        files = {RECORD_PART: (None, body.encode(), "application/json")}
        try:
            response = await self._http.post(f"{self.ingest_url}{UPLINK_PATH}", files=files)
        except httpx.HTTPError as exc:
            log.warning("scored telemetry uplink paused: ingest unreachable (%s)", str(exc) or type(exc).__name__)
            return False
        if response.status_code == 200:
            answer = UplinkAnswer.model_validate_json(response.content)
            self.metrics.uplink_records.labels(status=answer.status).inc()
        elif 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            reason = f"HTTP {response.status_code} {_detail(response)}"
            log.error("ingest refused scored-telemetry record %d; let go: %s", sequence, reason)
            self.metrics.uplink_records.labels(status="refused").inc()
        else:
            log.warning("scored telemetry uplink paused: ingest answered HTTP %d", response.status_code)
            return False
        await asyncio.to_thread(self.outbox.remove, sequence)
        return True


def _detail(response: httpx.Response) -> str:
    try:
        return json.dumps(response.json().get("detail", ""))[:300]
    except ValueError:
        return response.text[:300]
