"""The bridge: device messages in arrival order -> durable events -> acknowledgements in arrival order.

Three tasks share one event loop:

* the **pipeline** takes whatever messages have arrived (a batch), validates
  and stores them in worker threads (results keep arrival order), records the
  new samples in one transaction, then hands each message's event to the bus
  with ``enqueue`` -- many events are in flight at once, their order kept;
* the **acker** walks the pending messages oldest first and acknowledges each
  (MQTT PUBACK, HTTP response) once its event is durable: acknowledged by
  Kafka, or -- when Kafka did not acknowledge in time -- written to the disk
  buffer. Acknowledgements therefore go out in arrival order, as MQTT requires;
* the **drainer** re-publishes buffered events, oldest first, once Kafka is back.

While the buffer holds anything, new events go to the buffer too (behind the
older ones), so a device's events reach Kafka in the order the device sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgeloop_common.bus.base import BusUnavailableError, EventBus, Outgoing, PermanentError

from edgeloop_ingest.adapters.disk_buffer import DiskBuffer
from edgeloop_ingest.metrics import IngestMetrics
from edgeloop_ingest.service import (
    Accepted,
    DeviceMessage,
    IngestService,
    Outcome,
    Publication,
    Rejected,
    refusal_publication,
)

log = logging.getLogger(__name__)

OnDurable = Callable[[Outcome], None]


@dataclass
class _Pending:
    """One event on its way (a telemetry batch's message has one per sample, in order)."""

    message: DeviceMessage
    outcome: Outcome
    publication: Publication
    on_durable: OnDurable
    kafka_ack: asyncio.Future[Any] | None = None  # None: the event goes to the disk buffer
    enqueued_at: float = field(default_factory=time.perf_counter)
    completes_message: bool = True  # the message's last event: once it is durable, so are the others (in order)


@dataclass(frozen=True)
class BridgeConfig:
    batch_max_messages: int = 256
    batches_in_flight: int = 4
    worker_threads: int = 32
    drain_batch_messages: int = 500
    drain_retry_s: float = 1.0
    store_retry_s: float = 1.0
    shutdown_grace_s: float = 5.0


class Bridge:
    def __init__(
        self,
        service: IngestService,
        bus: EventBus,
        buffer: DiskBuffer,
        config: BridgeConfig | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.service = service
        self.bus = bus
        self.buffer = buffer
        self.config = config or BridgeConfig()
        self.metrics = metrics or IngestMetrics()
        self._inbox: deque[tuple[DeviceMessage, OnDurable]] = deque()
        self._inbox_ready = asyncio.Event()
        _Prepared = tuple[list[tuple[DeviceMessage, OnDurable]], asyncio.Future[list[Outcome]]]
        self._prepared: asyncio.Queue[_Prepared] = asyncio.Queue(maxsize=self.config.batches_in_flight)
        self._pending: deque[_Pending] = deque()
        self._pending_ready = asyncio.Event()
        self._drain_wanted = asyncio.Event()
        self._buffer_lock = asyncio.Lock()
        self._buffering = False
        self._buffered_count = 0
        self._to_buffer = 0  # pending entries bound for the buffer, not written yet
        self._direct_in_flight = 0  # pending entries waiting for a Kafka acknowledgement
        self._executor = ThreadPoolExecutor(self.config.worker_threads, thread_name_prefix="ingest-worker")
        self._chunks_per_batch = max(1, self.config.worker_threads // self.config.batches_in_flight)
        self._tasks: list[asyncio.Task[None]] = []
        self._unfinished = 0  # taken and not yet acknowledged
        self._idle = asyncio.Event()
        self._idle.set()

    # -- public -------------------------------------------------------------------------------------------------

    @property
    def buffered_count(self) -> int:
        return self._buffered_count

    @property
    def buffering(self) -> bool:
        return self._buffering

    @property
    def in_flight(self) -> int:
        return self._unfinished

    async def start(self) -> None:
        self._buffered_count = await asyncio.to_thread(self.buffer.count)
        self.metrics.buffered.set(self._buffered_count)
        if self._buffered_count:
            log.info("disk buffer holds %d event(s) from before; draining them first", self._buffered_count)
            self._buffering = True
            self._drain_wanted.set()
        self._tasks = [
            asyncio.create_task(_supervised(self._run_pipeline), name="ingest-pipeline"),
            asyncio.create_task(_supervised(self._run_dispatcher), name="ingest-dispatcher"),
            asyncio.create_task(_supervised(self._run_acker), name="ingest-acker"),
            asyncio.create_task(_supervised(self._run_drainer), name="ingest-drainer"),
        ]

    async def stop(self) -> None:
        """Let what was taken become durable (bounded by ``shutdown_grace_s``), then stop. A message still
        unacknowledged then is redelivered by the broker later, so stopping loses nothing."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.shutdown_grace_s):
                await self._idle.wait()
        if self._unfinished:
            log.warning("stopping with %d message(s) unacknowledged; the broker redelivers them", self.in_flight)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, message: DeviceMessage, on_durable: OnDurable) -> None:
        """Take a message (from the event loop's thread); ``on_durable`` is called when its outcome is durable."""
        self._inbox.append((message, on_durable))
        self._unfinished += 1
        self._idle.clear()
        self.metrics.in_flight.inc()
        self._inbox_ready.set()

    async def handle(self, message: DeviceMessage) -> Outcome:
        """Submit and wait until the outcome is durable (HTTP uploads)."""
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def resolve(outcome: Outcome) -> None:
            if not done.done():
                done.set_result(outcome)

        self.submit(message, resolve)
        return await done

    async def publish_durably(self, publications: Sequence[Publication]) -> str:
        """Publish events that come from no device message (SampleLabeled); return once each is durable.

        Durable as for device messages: acknowledged by Kafka, or -- when Kafka does not acknowledge in
        time, or the buffer already holds events -- written to the disk buffer, which the drainer empties
        in order. Returns ``"published"`` or ``"buffered"`` (some or all went to the buffer).
        """
        if not publications:
            return "published"
        unsent = list(publications) if self._buffering else await self._publish_direct(publications)
        if not unsent:
            return "published"
        async with self._buffer_lock:
            await self._append_to_buffer(unsent)
            self._buffered_count += len(unsent)
        self._buffering = True
        self.metrics.buffered.set(self._buffered_count)
        self._drain_wanted.set()
        return "buffered"

    async def _publish_direct(self, publications: Sequence[Publication]) -> list[Publication]:
        """Hand every event to the bus (pipelined, in order); return those Kafka did not take, in order."""
        acks: list[Awaitable[Any]] = []
        for publication in publications:
            try:
                acks.append(
                    await self.bus.enqueue(
                        publication.event,
                        key=publication.key,
                        event_id=publication.event_id,
                        traceparent=publication.traceparent,
                    )
                )
            except (BusUnavailableError, PermanentError) as exc:  # the buffer keeps it; the drainer settles it
                log.warning("Kafka did not take %s (%r); buffering it on disk", publication.event_id, exc)
                break
        results = await asyncio.gather(*acks, return_exceptions=True)
        unsent = [p for p, result in zip(publications, results, strict=False) if isinstance(result, BaseException)]
        return unsent + list(publications[len(acks) :])

    # -- pipeline: prepare in order, hand to the bus in order -----------------------------------------------------

    async def _run_pipeline(self) -> None:
        """Start preparing each batch as it forms (several overlap: storage waits on fsync), in order."""
        while True:
            await self._inbox_ready.wait()
            batch = [self._inbox.popleft() for _ in range(min(len(self._inbox), self.config.batch_max_messages))]
            if not self._inbox:
                self._inbox_ready.clear()
            if batch:
                await self._prepared.put((batch, asyncio.ensure_future(self._prepare(batch))))

    async def _run_dispatcher(self) -> None:
        """Hand the prepared batches' events to the bus strictly in arrival order."""
        while True:
            batch, prepared = await self._prepared.get()
            outcomes = await prepared
            await self._dispatch(batch, outcomes)

    async def _prepare(self, batch: list[tuple[DeviceMessage, OnDurable]]) -> list[Outcome]:
        """Validate, store and record; retried while the store fails (nothing is acknowledged meanwhile)."""
        loop = asyncio.get_running_loop()
        while True:
            started = time.perf_counter()
            try:
                # A few jobs per batch, not one per message: each completion wakes the event loop. Telemetry alone
                # is pure Python (no image to decode, nothing to store): threads would only take turns, one job.
                messages = [message for message, _ in batch]
                telemetry_only = all(message.kind == "telemetry" for message in messages)
                chunks = _chunks(messages, 1 if telemetry_only else self._chunks_per_batch)
                if len(chunks) == 1:  # a lone message (light traffic), or telemetry: one thread hop, not two
                    outcomes = await loop.run_in_executor(self._executor, self._prepare_and_record, chunks[0])
                else:
                    prepared = await asyncio.gather(
                        *(loop.run_in_executor(self._executor, self._prepare_chunk, chunk) for chunk in chunks)
                    )
                    outcomes = [outcome for chunk_outcomes in prepared for outcome in chunk_outcomes]
                    await loop.run_in_executor(self._executor, self.service.record, outcomes)
            except Exception as exc:  # noqa: BLE001 - storage trouble (disk, database): retried, never dropped
                # Not the device's fault (bad input is a Rejected outcome, not an exception): keep the messages.
                log.error("storing a batch of %d message(s) failed, retrying: %r", len(batch), exc)
                await asyncio.sleep(self.config.store_retry_s)
                continue
            self.metrics.prepare_duration.observe(time.perf_counter() - started)
            return list(outcomes)

    def _prepare_chunk(self, messages: list[DeviceMessage]) -> list[Outcome]:
        return [self.service.prepare(message) for message in messages]

    def _prepare_and_record(self, messages: list[DeviceMessage]) -> list[Outcome]:
        outcomes = self._prepare_chunk(messages)
        self.service.record(outcomes)
        return outcomes

    async def _dispatch(self, batch: list[tuple[DeviceMessage, OnDurable]], outcomes: list[Outcome]) -> None:
        """Hand a batch's events to the bus at once (``enqueue_many``: a record batch per partition), then queue them
        for the acker in arrival order. An event the bus did not take goes to the disk buffer, and so do the batches
        after it (while the buffer holds anything)."""
        entries: list[_Pending] = []
        for (message, on_durable), outcome in zip(batch, outcomes, strict=True):
            if outcome.publication is None:  # an HTTP rejection: the client gets the reason, nothing to publish
                self._complete(message, outcome, on_durable, "rejected")
                continue
            publications = outcome.publications if isinstance(outcome, Accepted) else (outcome.publication,)
            for index, publication in enumerate(publications, start=1):
                entries.append(
                    _Pending(message, outcome, publication, on_durable, completes_message=index == len(publications))
                )
        if not self._buffering and entries:
            outgoing = [Outgoing(p.event, p.key, p.event_id, p.traceparent) for p in (e.publication for e in entries)]
            try:
                acks = await self.bus.enqueue_many(outgoing)
            except Exception as exc:  # noqa: BLE001 - not the bus's documented failures: all kept on disk
                log.error("the bus failed taking %d event(s): %r; buffering them", len(entries), exc)
                acks = []
                self._buffering = True
            for entry, ack in zip(entries, acks, strict=False):
                error = None if not ack.done() else "cancelled" if ack.cancelled() else ack.exception()
                if error is None:
                    entry.kafka_ack = ack
                    self._direct_in_flight += 1
                    continue
                if not self._buffering:  # the first event the bus did not take: buffered, and every batch after it
                    if isinstance(error, BusUnavailableError):
                        log.warning("Kafka unavailable (%s); buffering events on disk", error)
                    else:  # e.g. PermanentError: kept on disk, the drainer settles it
                        log.error("the bus did not take %s: %r; buffering it", entry.publication.event_id, error)
                    self._buffering = True
        for entry in entries:
            if entry.kafka_ack is None:
                self._to_buffer += 1
            self._pending.append(entry)
        self._pending_ready.set()

    # -- acker: acknowledge in arrival order once durable ---------------------------------------------------------

    async def _run_acker(self) -> None:
        while True:
            if not self._pending:
                self._pending_ready.clear()
                await self._pending_ready.wait()
                continue
            head = self._pending[0]
            if head.kafka_ack is not None and await self._kafka_acknowledged(head):
                self._pending.popleft()
                if head.completes_message:
                    self._complete(head.message, head.outcome, head.on_durable, "published")
                continue
            await self._buffer_run()

    async def _kafka_acknowledged(self, entry: _Pending) -> bool:
        """Wait for Kafka's answer; on failure the entry is re-routed to the disk buffer."""
        assert entry.kafka_ack is not None
        try:
            await entry.kafka_ack
        except BusUnavailableError as exc:
            self._reroute_to_buffer(entry, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - any publish failure: keep the event on disk and retry later
            log.error("publishing %s failed unexpectedly: %r", entry.publication.event_id, exc)
            self._reroute_to_buffer(entry, exc)
            return False
        self._direct_in_flight -= 1
        self.metrics.publish_duration.observe(time.perf_counter() - entry.enqueued_at)
        return True

    def _reroute_to_buffer(self, entry: _Pending, exc: BaseException) -> None:
        if not self._buffering:
            log.warning("Kafka did not acknowledge in time (%r); buffering events on disk", exc)
        self._buffering = True
        entry.kafka_ack = None
        self._direct_in_flight -= 1
        self._to_buffer += 1

    async def _buffer_run(self) -> None:
        """Write the run of oldest entries bound for the buffer in one durable transaction, then ack them."""
        run: list[_Pending] = []
        for entry in self._pending:
            if entry.kafka_ack is None:
                run.append(entry)
            elif entry.kafka_ack.done() and entry.kafka_ack.exception() is not None:
                self._reroute_to_buffer(entry, entry.kafka_ack.exception() or RuntimeError())
                run.append(entry)
            else:
                break
        async with self._buffer_lock:
            await self._append_to_buffer([entry.publication for entry in run])
            self._buffered_count += len(run)
            self._to_buffer -= len(run)
        self.metrics.buffered.set(self._buffered_count)
        for _ in run:
            self._pending.popleft()
        for entry in run:
            if entry.completes_message:
                self._complete(entry.message, entry.outcome, entry.on_durable, "buffered")
        self._drain_wanted.set()

    async def _append_to_buffer(self, publications: list[Publication]) -> None:
        while True:
            try:
                await asyncio.to_thread(self.buffer.append, publications)
                return
            except Exception as exc:  # noqa: BLE001 - disk full, sqlite3.Error, ...: retry, never drop
                log.error("disk buffer write failed, retrying: %r", exc)
            await asyncio.sleep(self.config.store_retry_s)

    def _complete(self, message: DeviceMessage, outcome: Outcome, on_durable: OnDurable, path: str) -> None:
        if isinstance(outcome, Rejected):
            self.metrics.rejections.labels(message.ingress, message.kind, outcome.code.value).inc()
            label = "dead_lettered" if outcome.publication else "rejected"
        else:
            label = path
            if outcome.redelivery:
                self.metrics.bridge_redeliveries.inc()
        if message.ingress == "mqtt":
            self.metrics.bridge_messages.labels(message.kind, label).inc()
        else:
            self.metrics.http_uploads.labels("rejected" if isinstance(outcome, Rejected) else "accepted").inc()
        self.metrics.in_flight.dec()
        self._unfinished -= 1
        if not self._unfinished:
            self._idle.set()
        try:
            on_durable(outcome)
        except Exception:
            log.exception("acknowledging %s failed", message.mqtt_topic or message.ingress)

    # -- drainer: buffered events back to Kafka, oldest first -----------------------------------------------------

    async def _run_drainer(self) -> None:
        while True:
            await self._drain_wanted.wait()
            if self._buffered_count == 0:
                async with self._buffer_lock:
                    if self._buffered_count == 0 and self._to_buffer == 0:
                        if self._buffering:
                            log.info("disk buffer drained; publishing to Kafka directly again")
                        self._buffering = False
                        self._drain_wanted.clear()
                        continue
                await asyncio.sleep(0.01)
                continue
            if self._direct_in_flight:
                # Newer events still wait for Kafka's answer; let them settle so nothing overtakes them.
                await asyncio.sleep(0.01)
                continue
            if not await self._drain_round():
                await asyncio.sleep(self.config.drain_retry_s)

    async def _publish_refusal(self, publication: Publication, error: PermanentError) -> bool:
        """Kafka refuses this event for good: publish a DeadLetter for it instead, so the buffer moves on."""
        log.error("Kafka refuses buffered event %s for good (%s); dead-lettering it", publication.event_id, error)
        refusal = refusal_publication(publication, error)
        try:
            await self.bus.publish(
                refusal.event, key=refusal.key, event_id=refusal.event_id, traceparent=refusal.traceparent
            )
        except (BusUnavailableError, PermanentError) as exc:
            log.error("could not dead-letter refused event %s: %r", publication.event_id, exc)
            return False
        return True

    async def _drain_round(self) -> bool:
        """Publish the oldest buffered events; delete those acknowledged. False when Kafka is still away."""
        batch = await asyncio.to_thread(self.buffer.head, self.config.drain_batch_messages)
        if not batch:
            async with self._buffer_lock:
                self._buffered_count = await asyncio.to_thread(self.buffer.count)
            return True
        acks: list[Awaitable[Any]] = []
        unavailable: BaseException | None = None
        for buffered in batch:
            publication = buffered.publication
            try:
                acks.append(
                    await self.bus.enqueue(
                        publication.event,
                        key=publication.key,
                        event_id=publication.event_id,
                        traceparent=publication.traceparent,
                    )
                )
            except BusUnavailableError as exc:
                unavailable = exc
                break
            except PermanentError as exc:
                refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                refused.set_exception(exc)
                acks.append(refused)
        results = await asyncio.gather(*acks, return_exceptions=True)
        acknowledged = 0
        for buffered, result in zip(batch, results, strict=False):
            if isinstance(result, PermanentError) and await self._publish_refusal(buffered.publication, result):
                acknowledged += 1
                continue
            if isinstance(result, BaseException):
                unavailable = result
                break
            acknowledged += 1
        if acknowledged:
            async with self._buffer_lock:
                await asyncio.to_thread(self.buffer.remove_through, batch[acknowledged - 1].sequence)
                self._buffered_count -= acknowledged
            self.metrics.buffered.set(self._buffered_count)
            self.metrics.drained.inc(acknowledged)
            log.info("drained %d buffered event(s) to Kafka; %d left", acknowledged, self._buffered_count)
        if unavailable is not None:
            log.warning("Kafka still unavailable while draining the disk buffer: %r", unavailable)
            return False
        return True


def _chunks(items: list[DeviceMessage], count: int) -> list[list[DeviceMessage]]:
    """``items`` in at most ``count`` contiguous chunks of near-equal size, in order."""
    count = min(count, len(items))
    size, extra = divmod(len(items), count)
    chunks, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


async def _supervised(run: Callable[[], Awaitable[None]]) -> None:
    """Run a bridge task forever: a bug in one round is logged loudly and the task goes on."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bridge task %s failed; restarting it", getattr(run, "__name__", run))
            await asyncio.sleep(1.0)
