"""The outbox relay: publishes the events the registry wrote beside its changes, in order, through the bus.

Each outbox row is published with its own ``event_id`` and only then marked
published. A crash between the two publishes the row again after the restart,
with the same id, which consumers skip (the bus's idempotency). While the bus is
unavailable, rows wait in the table and the relay retries with a capped backoff;
it never skips a row, so events leave in the order their changes committed.

Several replicas may relay at once: each publishes in order and marks a row only
after it was acknowledged, so every row reaches Kafka before any row behind it
was marked; a duplicate carries the same event id and is skipped by consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from edgeloop_common.bus.base import BusUnavailableError, EventBus, PermanentError
from edgeloop_common.events import EVENTS_BY_TYPE, Event
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from edgeloop_registry.metrics import RegistryMetrics

log = logging.getLogger(__name__)


class PendingRow(Protocol):
    id: int
    event_id: str
    event_type: str
    payload: dict[str, Any]


class OutboxStore(Protocol):
    def pending(self, limit: int) -> list[Any]: ...

    def mark_published(self, row_id: int) -> None: ...

    def record_failure(self, row_id: int, error: str) -> None: ...

    def pending_count(self) -> int: ...


@dataclass(frozen=True)
class RelayConfig:
    poll_interval_s: float = 1.0
    batch_size: int = 100
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0


class OutboxRelay:
    def __init__(
        self,
        outbox: OutboxStore,
        bus: EventBus,
        config: RelayConfig | None = None,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self.outbox = outbox
        self.bus = bus
        self.config = config or RelayConfig()
        self.metrics = metrics or RegistryMetrics()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pass_lock = asyncio.Lock()  # one relay pass at a time in this process
        self.last_error: str | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="registry-outbox-relay")

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Try once more to publish what is pending (bounded), then stop. What is left waits for the next start."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        try:
            async with asyncio.timeout(flush_timeout_s):
                await self.relay_pending()
        except (BusUnavailableError, PermanentError, SQLAlchemyError, TimeoutError) as exc:
            log.warning("outbox not flushed at shutdown (%s); it is published after the next start", exc)

    def notify(self) -> None:
        """Wake the relay now (a transaction with an event committed). Safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._wake.set)

    async def relay_pending(self) -> int:
        """Publish every pending row in order; return how many were published. Raises BusUnavailableError (and
        PermanentError) at the first row that could not be published: the rows behind it wait."""
        published = 0
        async with self._pass_lock:
            while True:
                rows = await asyncio.to_thread(self.outbox.pending, self.config.batch_size)
                for row in rows:
                    await self._publish(row)
                    published += 1
                if len(rows) < self.config.batch_size:
                    break
            await self._update_pending_gauge()
        return published

    async def _publish(self, row: PendingRow) -> None:
        try:
            await self.bus.publish(_event_of(row), event_id=row.event_id)
        except (BusUnavailableError, PermanentError) as exc:
            self.metrics.outbox_publish_failures.inc()
            await asyncio.to_thread(self.outbox.record_failure, row.id, f"{type(exc).__name__}: {exc}")
            await self._update_pending_gauge()
            raise
        await asyncio.to_thread(self.outbox.mark_published, row.id)
        self.metrics.outbox_published.labels(event_type=row.event_type).inc()

    async def _update_pending_gauge(self) -> None:
        self.metrics.outbox_pending.set(await asyncio.to_thread(self.outbox.pending_count))

    async def _run(self) -> None:
        backoff = self.config.retry_initial_s
        while True:
            try:
                await self.relay_pending()
            except (BusUnavailableError, PermanentError, SQLAlchemyError) as exc:
                if self.last_error is None:
                    log.warning("outbox relay paused, events wait in the outbox: %s", exc)  # once per outage
                self.last_error = str(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.retry_max_s)
                continue
            if self.last_error is not None:
                log.info("outbox relay resumed")
                self.last_error = None
            backoff = self.config.retry_initial_s
            await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.poll_interval_s):
                await self._wake.wait()
        self._wake.clear()


def _event_of(row: PendingRow) -> Event:
    event_cls = EVENTS_BY_TYPE.get(row.event_type)
    if event_cls is None:
        raise PermanentError(f"outbox row {row.id} has unknown event type {row.event_type!r}")
    try:
        return event_cls.model_validate(row.payload)
    except ValidationError as exc:
        raise PermanentError(f"outbox row {row.id} is not a valid {event_cls.__name__}: {exc}") from exc
