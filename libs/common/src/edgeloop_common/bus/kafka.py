"""The Kafka event bus, on aiokafka directly.

Why not FastStream: the delivery rules need exact control of three things a
framework decides for you: *when* an offset is committed (per record, only after
the handler's effects and its processed-event record are written), what happens
to the record in flight when a rebalance revokes its partition, and how a record
that cannot be decoded or handled becomes a DeadLetter (docs/bus.md).

Producer: ``acks="all"`` with the idempotent producer, started lazily and
restarted when its sender dies, so a bus created while Kafka is down starts
working when Kafka returns. ``publish`` waits for the acknowledgement at most
``publish_timeout_s`` and raises :class:`BusUnavailableError` otherwise.

Consumers: one ``AIOKafkaConsumer`` per consumer group, auto-commit off. Each
record, in partition order: decode (CloudEvents binary mode), run the handler
through :func:`dispatch.deliver` (idempotency, retries, DeadLetter), then hand
that record's offset + 1 to the group's committer, which commits it while the
next record is handled (one commit request at a time; a rebalance and a stop wait
for it). A failure of the bus itself (dead-letter topic or processed-event store
unreachable) commits nothing: the consumer seeks back and tries the record again
after a backoff.

Batches (docs/bus.md, "Batches"): ``enqueue_many`` hands many events over as one
record batch per partition (``send_batch``); a ``subscribe_batch`` handler gets a
partition's fetched records at once and they are committed together, and any
trouble with a batch sends its records down the per-record path above.

Broadcast subscriptions (``subscribe(..., broadcast=True)``): one consumer per
subscription name with no consumer group: it is assigned every partition of its
topics, reads them from the beginning, commits nothing, and deduplicates event
ids in memory. Decoding, retries and dead letters are the same as in a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata

from edgeloop_common import topics
from edgeloop_common.bus.base import (
    BusUnavailableError,
    EventBus,
    Outgoing,
    PermanentError,
    RetryPolicy,
    Subscription,
)
from edgeloop_common.bus.codec import EncodedRecord, decode, encode, encode_many, headers_dict
from edgeloop_common.bus.dispatch import dead_letter_for, deliver
from edgeloop_common.events import DeadLetter, Event
from edgeloop_common.idempotency import InMemoryProcessedEventStore, ProcessedEventStore
from edgeloop_common.kafka_auth import PLAINTEXT, KafkaAuth

log = logging.getLogger(__name__)

# Errors that no retry will cure: the record itself is refused.
_REFUSED_RECORD_ERRORS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)
_TOPIC_ALREADY_EXISTS = 36
_DYNAMIC_TOPIC = 1  # DescribeConfigs config_source of a config set on the topic itself

DEFAULT_TOPIC_PARTITIONS = 3
POLL_TIMEOUT_MS = 250
MAX_POLL_RECORDS = 100
# Records a group with a batch subscription (``subscribe_batch``) takes per poll: a partition's share is one batch.
BATCH_MAX_POLL_RECORDS = 500
# How long the broker may hold a fetch that finds no new record. aiokafka's default, 500 ms, is a latency trap:
# a partition whose fetched records wait over 100 ms to be taken (one slow handler) is left out of the next fetch
# request and fetched again only when that request returns, up to this long later; the records that pile up
# meanwhile arrive as a burst, whose handling makes the next records wait too long again, so the stall sustains
# itself (docs/benchmarks-e2e.md). 50 ms bounds it and lets it die out; an idle group then sends about 20 small
# fetch requests a second (1.6% of a core here, against 0.4% at 500 ms and 4.8% at 10 ms).
FETCH_MAX_WAIT_MS = 50
READY_CACHE_S = 1.0
PROBE_TIMEOUT_S = 2.0
RECONNECT_BACKOFF_S = 0.5
MAX_RETRY_BACKOFF_S = 5.0
TOPIC_VISIBLE_TIMEOUT_S = 10.0
# Most bytes of one partition's records in one of ``enqueue_many``'s record batches (below the broker's default
# ``message.max.bytes``, 1 MiB). The producer's own batches, which ``send`` fills, keep aiokafka's 16 KiB: the
# producer has one produce request in flight per broker, and a second batch of a partition waits for the first to
# leave, a round trip; at 16 KiB (about ten TelemetryScored) that capped a producer near 5,000 events/s here
# (docs/telemetry.md). Larger producer batches for ``send`` too would also change how finely a consumer interleaves
# partitions behind a burst (the drift service's site windows noticed).
BATCH_BYTES = 512 * 1024
_NO_COMPRESSION = 0  # the bus's producer compresses nothing; a batch it is given must not either
# A record larger than this goes through ``send`` (``enqueue``'s path), not into ``enqueue_many``'s batches: one over
# the producer's ``max_request_size`` is then refused at once, alone, as ``enqueue`` refuses it.
BATCH_RECORD_MAX_BYTES = 64 * 1024
_PARTITIONER = DefaultPartitioner()  # the producer's own: murmur2 of the key, as the Java client


@functools.lru_cache(maxsize=65_536)
def _key_hash(key: bytes) -> int:
    """murmur2 of a record key, remembered: aiokafka's is pure Python (~5% of ingest's CPU per telemetry reading)
    and the keys repeat (a device's id)."""
    return murmur2(key) & 0x7FFFFFFF


def _partition_of(key: bytes | None, partitions: list[int]) -> int:
    """The partition the producer's own partitioner picks (``DefaultPartitioner``), for a key seen before cheaply."""
    if key is None:
        return int(_PARTITIONER(key, partitions, partitions))
    return partitions[_key_hash(key) % len(partitions)]


class _Outcome(enum.Enum):
    HANDLED = "handled"  # its effects are done; its offset is with the committer
    STALE = "stale"  # fetched before a rebalance: not started, the partition's owner reads it again
    FAILED = "failed"  # the bus could not finish it: nothing committed, read it again


class KafkaBus(EventBus):
    """:class:`EventBus` over Kafka. ``topic_prefix`` namespaces its topics and consumer groups (tests, staging);
    the group timeouts, partitions and bounds are options so tests can make rebalances quick."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        source: str,
        retry: RetryPolicy | None = None,
        processed: ProcessedEventStore | None = None,
        topic_prefix: str = "",
        publish_timeout_s: float = 10.0,
        client_id: str | None = None,
        topic_partitions: int = DEFAULT_TOPIC_PARTITIONS,
        topic_replication_factor: int = 1,
        create_topics: bool = True,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        shutdown_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        auth: KafkaAuth = PLAINTEXT,
    ) -> None:
        super().__init__(source=source, retry=retry)
        self.bootstrap_servers = bootstrap_servers
        # TLS and SASL options of every client the bus builds (producer, consumers, admin clients).
        self.auth = auth
        self._client_options = auth.client_options()
        self.processed = processed or InMemoryProcessedEventStore()
        self.topic_prefix = topic_prefix
        self.publish_timeout_s = publish_timeout_s
        self.client_id = client_id or f"edgeloop-{source}"
        self.topic_partitions = topic_partitions
        self.topic_replication_factor = topic_replication_factor
        self.create_topics = create_topics
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.shutdown_timeout_s = shutdown_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.fetch_max_wait_ms = fetch_max_wait_ms

        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()  # hands records to the producer in call order
        self._next_connect_at = 0.0
        self._last_error = ""
        self._suspect_down = False  # an ack timed out or a probe failed: check before handing over more
        # The broker answered OutOfOrderSequenceNumber: the idempotent producer's sequence (seen after a broker
        # restart, tests/chaos) is broken for good, every later batch gets the same answer; replace the producer.
        self._producer_out_of_sequence = False
        self._ready_cache: tuple[float, bool] | None = None

        self._topics_lock = asyncio.Lock()
        self._topics_created = False
        self._groups: list[_GroupConsumer] = []
        self._broadcasts: list[_BroadcastConsumer] = []
        self._group_tasks: list[asyncio.Task[None]] = []  # the consumers' loops, broadcast ones included
        self._stopping = asyncio.Event()

    # -- topics -------------------------------------------------------------------------------------------------

    def topic_name(self, topic: str) -> str:
        """The Kafka topic that carries the contract topic ``topic`` (with the bus's prefix)."""
        return f"{self.topic_prefix}{topic}"

    def group_name(self, group: str) -> str:
        """The Kafka consumer group of the bus's group ``group``: the prefix namespaces groups as well as topics."""
        return f"{self.topic_prefix}{group}"

    @property
    def dead_letter_topic(self) -> str:
        return self.topic_name(topics.DEAD_LETTER)

    async def ensure_topics(self) -> None:
        """Create the contract's topics (prefixed) that are missing, so consumer groups start cleanly, and give
        existing ones the configs of ``topics.KAFKA_TOPIC_CONFIGS`` they lack (a topic made before it was
        compacted)."""
        if self._topics_created or not self.create_topics:
            return
        async with self._topics_lock:
            if self._topics_created:
                return
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-admin",
                request_timeout_ms=10_000,
                **self._client_options,
            )
            try:
                async with asyncio.timeout(self.connect_timeout_s * 2 + TOPIC_VISIBLE_TIMEOUT_S):
                    await admin.start()
                    existing = set(await admin.list_topics())
                    wanted = [self.topic_name(topic) for topic in topics.ALL_KAFKA_TOPICS]
                    missing = [name for name in wanted if name not in existing]
                    if missing:
                        await self._create(admin, missing)
                    configured = {
                        self.topic_name(topic): wanted for topic, wanted in topics.KAFKA_TOPIC_CONFIGS.items()
                    }
                    await ensure_topic_configs(admin, {n: c for n, c in configured.items() if n in existing})
            finally:
                await admin.close()
            self._topics_created = True

    async def _create(self, admin: AIOKafkaAdminClient, names: list[str]) -> None:
        configs = {self.topic_name(topic): wanted for topic, wanted in topics.KAFKA_TOPIC_CONFIGS.items()}
        new_topics = [
            NewTopic(name, self.topic_partitions, self.topic_replication_factor, topic_configs=configs.get(name))
            for name in names
        ]
        response = await admin.create_topics(new_topics)
        for entry in response.topic_errors:
            name, error_code = entry[0], entry[1]
            if error_code not in (0, _TOPIC_ALREADY_EXISTS):
                log.warning("could not create topic %s: error %s %s", name, error_code, entry[2:] or "")
        log.info("created topics %s", ", ".join(names))
        await self._wait_until_visible(admin, names)

    async def _wait_until_visible(self, admin: AIOKafkaAdminClient, names: list[str]) -> None:
        """Created topics reach the brokers' metadata a moment later; a consumer that joins before would get no
        partitions of them until its next metadata refresh."""
        deadline = time.monotonic() + TOPIC_VISIBLE_TIMEOUT_S
        while True:
            described = await admin.describe_topics(names)
            if all(entry["error_code"] == 0 and entry["partitions"] for entry in described):
                return
            if time.monotonic() > deadline:
                log.warning("created topics not visible after %ss; going on", TOPIC_VISIBLE_TIMEOUT_S)
                return
            await asyncio.sleep(0.1)

    # -- producer -----------------------------------------------------------------------------------------------

    async def _started_producer(self) -> AIOKafkaProducer:
        """The producer, started now if it is not yet (or was lost); BusUnavailableError while Kafka is away."""
        producer = self._producer
        if producer is not None and not _sender_died(producer) and not self._producer_out_of_sequence:
            return producer
        async with self._producer_lock:
            if self._producer is not None and self._producer_out_of_sequence:
                log.warning("Kafka producer's sequence is out of order (a broker restart?); starting a new producer")
                self._producer_out_of_sequence = False
                await self._close_producer()
            if self._producer is not None and _sender_died(self._producer):
                log.warning("Kafka producer's sender stopped; starting a new producer")
                await self._close_producer()
            if self._producer is None:
                self._producer = await self._start_producer()
            return self._producer

    async def _start_producer(self) -> AIOKafkaProducer:
        if time.monotonic() < self._next_connect_at:
            raise BusUnavailableError(f"Kafka at {self.bootstrap_servers} is unreachable: {self._last_error}")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            **self._client_options,
        )
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await producer.stop()
            self._next_connect_at = time.monotonic() + RECONNECT_BACKOFF_S
            self._last_error = str(exc) or type(exc).__name__
            raise BusUnavailableError(f"Kafka at {self.bootstrap_servers} is unreachable: {self._last_error}") from exc
        except BaseException:
            await producer.stop()  # cancelled (the caller's deadline) half-way: close its connections
            raise
        log.info("Kafka producer connected to %s", self.bootstrap_servers)
        return producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(self.shutdown_timeout_s):
                await producer.stop()  # flushes what was handed to it
        except TimeoutError:
            log.warning("Kafka producer did not flush in %ss; what it held is unacknowledged", self.shutdown_timeout_s)

    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        ack = await self.enqueue(event, key=key, event_id=event_id, traceparent=traceparent)
        return await ack

    async def enqueue(
        self,
        event: Event,
        *,
        key: str | None = None,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> Awaitable[str]:
        """Hand ``event`` to the producer in call order; the returned future resolves on Kafka's ack.

        Raises :class:`BusUnavailableError` at once when the record could not even be handed over (Kafka known
        to be away); the future raises it when the ack does not come within ``publish_timeout_s``. Such a record
        may still land later (the idempotent producer keeps retrying it): a caller that publishes it again makes
        a duplicate with the same event id, which consumers skip.
        """
        record = encode(event, source=self.source, key=key, event_id=event_id, traceparent=traceparent)
        topic = self.topic_name(record.topic)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout_s
        try:
            async with asyncio.timeout_at(deadline), self._send_lock:
                producer = await self._started_producer()
                if self._suspect_down and not await self.ready():
                    raise BusUnavailableError(f"Kafka at {self.bootstrap_servers} is unreachable: {self._last_error}")
                delivery = await producer.send(topic, value=record.value, key=record.key, headers=record.headers)
        except TimeoutError as exc:
            self._suspect_down = True
            raise BusUnavailableError(f"Kafka did not take {event.event_type} in {self.publish_timeout_s}s") from exc
        except _REFUSED_RECORD_ERRORS as exc:
            raise PermanentError(f"Kafka refuses {event.event_type} on {topic}: {exc}") from exc
        except KafkaError as exc:
            raise BusUnavailableError(f"Kafka could not take {event.event_type}: {exc}") from exc
        return self._ack_future(delivery, topic=topic, event_id=record.event_id, deadline=deadline)

    async def enqueue_many(self, outgoing: Sequence[Outgoing]) -> list[asyncio.Future[str]]:
        """Hand the events to the producer in order, as one record batch per partition (aiokafka's ``send_batch``:
        a few microseconds a record against tens for a ``send`` and a future of its own); see
        :meth:`EventBus.enqueue_many`. A partition's records keep their order, and go to the partition ``send``
        would pick for their key. Each future resolves on its batch's ack, or fails as ``enqueue``'s would; a
        record over ``BATCH_RECORD_MAX_BYTES`` goes through ``send``, as with ``enqueue``. The records handed over
        before a failure stay handed over; the others' futures fail at once with :class:`BusUnavailableError`."""
        if not outgoing:
            return []
        loop = asyncio.get_running_loop()
        records = encode_many(outgoing, source=self.source)
        acks: list[asyncio.Future[str]] = [loop.create_future() for _ in records]
        handed = [False] * len(records)
        deadline = loop.time() + self.publish_timeout_s
        current: int | None = None  # the record being handed over on its own
        try:
            async with asyncio.timeout_at(deadline), self._send_lock:
                producer = await self._started_producer()
                if self._suspect_down and not await self.ready():
                    raise BusUnavailableError(f"Kafka at {self.bootstrap_servers} is unreachable: {self._last_error}")
                partitions: dict[str, list[int]] = {}
                open_batches: dict[TopicPartition, _OpenBatch] = {}

                async def hand_over(tp: TopicPartition) -> None:
                    batch = open_batches.pop(tp)
                    delivery = await producer.send_batch(batch.builder, tp.topic, partition=tp.partition)
                    self._settle(delivery, [(acks[i], records[i].event_id) for i in batch.indices], tp.topic, deadline)
                    for i in batch.indices:
                        handed[i] = True

                for index, record in enumerate(records):
                    topic = self.topic_name(record.topic)
                    if topic not in partitions:
                        partitions[topic] = list(await producer.partitions_for(topic))
                    tp = TopicPartition(topic, _partition_of(record.key, partitions[topic]))
                    if _fits_a_batch(record):
                        batch = open_batches.get(tp)
                        if batch is None:
                            batch = open_batches[tp] = _OpenBatch.new()
                        if not batch.add(record):
                            await hand_over(tp)  # full
                            batch = open_batches[tp] = _OpenBatch.new()
                            batch.add(record)  # an empty batch takes a record up to its size
                        batch.indices.append(index)
                        continue
                    if tp in open_batches:
                        await hand_over(tp)  # what came before it on its partition goes first
                    current = index
                    delivery = await producer.send(
                        topic, value=record.value, key=record.key, headers=record.headers, partition=tp.partition
                    )
                    current = None
                    self._settle(delivery, [(acks[index], record.event_id)], topic, deadline)
                    handed[index] = True
                for tp in list(open_batches):
                    await hand_over(tp)
        except TimeoutError:
            self._suspect_down = True
            self._fail_unhanded(acks, handed, f"Kafka did not take {len(records)} events in {self.publish_timeout_s}s")
        except _REFUSED_RECORD_ERRORS as exc:
            if current is not None:  # the record sent on its own is refused for good
                event_type = outgoing[current].event.event_type
                acks[current].set_exception(PermanentError(f"Kafka refuses {event_type}: {exc}"))
                handed[current] = True
            self._fail_unhanded(acks, handed, f"not handed over: an earlier event was refused ({exc})")
        except KafkaError as exc:
            self._fail_unhanded(acks, handed, f"Kafka could not take the events: {exc}")
        except BusUnavailableError as exc:
            self._fail_unhanded(acks, handed, str(exc))
        return acks

    @staticmethod
    def _fail_unhanded(acks: list[asyncio.Future[str]], handed: list[bool], reason: str) -> None:
        """Every record not handed over is not durable: its future fails with :class:`BusUnavailableError`."""
        for ack, done in zip(acks, handed, strict=True):
            if not done and not ack.done():
                ack.set_exception(BusUnavailableError(reason))

    def _ack_future(
        self, delivery: asyncio.Future[RecordMetadata], *, topic: str, event_id: str, deadline: float
    ) -> asyncio.Future[str]:
        """A future for ``event_id`` that resolves on the broker's ack or fails at ``deadline`` (no task per record)."""
        ack: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._settle(delivery, [(ack, event_id)], topic, deadline)
        return ack

    def _settle(
        self,
        delivery: asyncio.Future[Any],
        waiting: list[tuple[asyncio.Future[str], str]],
        topic: str,
        deadline: float,
    ) -> None:
        """Resolve each ``(future, event id)`` of ``waiting`` when ``delivery`` (a record's or a batch's) is
        acknowledged; fail them when it fails or at ``deadline``. One timer and one callback for them all."""
        loop = asyncio.get_running_loop()

        def expire() -> None:
            self._suspect_down = True
            for ack, event_id in waiting:
                if not ack.done():
                    reason = f"Kafka did not acknowledge {event_id} on {topic} within {self.publish_timeout_s}s"
                    ack.set_exception(BusUnavailableError(reason))

        timer = loop.call_at(deadline, expire)

        def delivered(done: asyncio.Future[Any]) -> None:
            timer.cancel()
            error = BaseException("delivery cancelled") if done.cancelled() else done.exception()
            if error is None:
                self._suspect_down = False
                acknowledged = 0
                for ack, event_id in waiting:
                    if not ack.done():
                        ack.set_result(event_id)
                        acknowledged += 1
                self.stats.published += acknowledged
                self.stats.by_topic[topic] = self.stats.by_topic.get(topic, 0) + acknowledged
                return
            if not isinstance(error, _REFUSED_RECORD_ERRORS):
                self._producer_out_of_sequence |= isinstance(error, OutOfOrderSequenceNumber)
            for ack, event_id in waiting:
                if ack.done():
                    continue
                if isinstance(error, _REFUSED_RECORD_ERRORS):
                    ack.set_exception(PermanentError(f"Kafka refused {event_id} on {topic}: {error!r}"))
                else:
                    ack.set_exception(
                        BusUnavailableError(f"Kafka did not acknowledge {event_id} on {topic}: {error!r}")
                    )

        delivery.add_done_callback(delivered)

    async def publish_dead_letter(self, dead_letter: DeadLetter, *, event_id: str | None = None) -> str:
        """Publish ``dead_letter``; one Kafka refuses (an original near the size limit) goes without its value, so a
        consumer is never stuck on a record it cannot even dead-letter."""
        try:
            return await super().publish_dead_letter(dead_letter, event_id=event_id)
        except PermanentError as exc:
            log.error("dead letter refused (%s); publishing it without the original value", exc)
            slim = dead_letter.model_copy(
                update={
                    "original_value_b64": "",
                    "reason": f"{dead_letter.reason} (original value of {dead_letter.original_size_bytes} bytes "
                    "not kept: too large for the dead-letter topic)",
                }
            )
            return await super().publish_dead_letter(slim, event_id=event_id)

    async def ready(self) -> bool:
        """Whether Kafka answers a metadata request now (cached for a second, so /readyz stays cheap)."""
        now = time.monotonic()
        if self._ready_cache is not None and now - self._ready_cache[0] < READY_CACHE_S:
            return self._ready_cache[1]
        reachable = await self._probe()
        self._ready_cache = (time.monotonic(), reachable)
        self._suspect_down = not reachable
        return reachable

    async def _probe(self) -> bool:
        try:
            producer = await self._started_producer()
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await producer.client.fetch_all_metadata()
        except (BusUnavailableError, KafkaError, TimeoutError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start one consumer per group. Kafka being away is not an error: the bus connects when it
        returns (``ready()`` says so meanwhile)."""
        if self._group_tasks:
            return
        self._stopping.clear()
        grouped = [s for s in self.subscriptions if not s.broadcast]
        broadcast = [s for s in self.subscriptions if s.broadcast]
        self._groups = [_GroupConsumer(self, group, subs) for group, subs in _by_group(grouped).items()]
        self._broadcasts = [_BroadcastConsumer(self, name, subs) for name, subs in _by_group(broadcast).items()]
        try:
            await self.ensure_topics()
            await self._started_producer()
        except (BusUnavailableError, KafkaError, OSError, TimeoutError) as exc:
            log.warning("Kafka at %s is not reachable yet (%s); will keep trying", self.bootstrap_servers, exc)
        self._group_tasks = [
            asyncio.create_task(group.run(), name=f"kafka-bus:{group.group_id}") for group in self._groups
        ] + [
            asyncio.create_task(reader.run(), name=f"kafka-bus:{reader.group_id}:broadcast")
            for reader in self._broadcasts
        ]

    async def stop(self) -> None:
        """Stop fetching, let each handler in flight finish (bounded) and commit, leave the groups, flush."""
        self._stopping.set()
        if self._group_tasks:
            _, late = await asyncio.wait(self._group_tasks, timeout=self.shutdown_timeout_s)
            for task in late:
                log.warning(
                    "%s did not finish within %ss; its record in flight will be redelivered",
                    task.get_name(),
                    self.shutdown_timeout_s,
                )
                task.cancel()
            await asyncio.gather(*self._group_tasks, return_exceptions=True)
        self._group_tasks = []
        self._groups = []
        self._broadcasts = []
        await self._close_producer()

    async def wait_until_assigned(self, timeout_s: float = 30.0) -> None:
        """Wait until every consumer group of this bus has partitions (tests, and for knowing it consumes)."""
        async with asyncio.timeout(timeout_s):
            readers: list[_GroupConsumer | _BroadcastConsumer] = [*self._groups, *self._broadcasts]
            await asyncio.gather(*(reader.assigned.wait() for reader in readers))

    def caught_up(self) -> bool:
        """Every broadcast subscription has handled (or dead-lettered) the records its topics held when it
        first connected. False before ``start`` when there are broadcast subscriptions."""
        if any(s.broadcast for s in self.subscriptions) and not self._broadcasts:
            return False
        return all(reader.caught_up.is_set() for reader in self._broadcasts)

    async def wait_until_caught_up(self, timeout_s: float = 30.0) -> None:
        if not self._broadcasts and any(s.broadcast for s in self.subscriptions):
            raise RuntimeError("the bus is not started: nothing is replayed")
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(reader.caught_up.wait() for reader in self._broadcasts))

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass  # slept the whole time

    # -- consuming ----------------------------------------------------------------------------------------------

    async def _handle_record(
        self, group: _GroupConsumer | _BroadcastConsumer, record: ConsumerRecord[bytes, bytes]
    ) -> None:
        """Decode ``record`` and deliver it to the group's handler; dead-letter what cannot be decoded."""
        headers = list(record.headers)
        subscription = group.subscription_for(record.topic)
        dead_letter_id = group.dead_letter_id(record)
        try:
            event, context = decode(
                topic=record.topic,
                key=record.key,
                value=record.value,
                headers=headers,
                partition=record.partition,
                offset=record.offset,
            )
            if not isinstance(event, subscription.event_cls):
                raise PermanentError(f"{type(event).__name__} does not belong on {record.topic}")
        except PermanentError as exc:
            await self._dead_letter_undecodable(group, record, exc, event_id=dead_letter_id)
            return
        await deliver(
            subscription,
            event,
            context,
            retry=self.retry,
            processed=group.processed,
            stats=self.stats,
            service=self.source,
            raw_value=record.value or b"",
            raw_headers=headers_dict(headers),
            publish_dead_letter=functools.partial(self.publish_dead_letter, event_id=dead_letter_id),
        )

    async def _handle_batch(self, group: _GroupConsumer, records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        """Decode a partition's records and hand the events not processed yet to the subscription's batch handler
        at once, then record them as processed. False, with nothing done, when a record is not an event of the
        topic (the per-record path dead-letters it); the handler's exception is raised."""
        subscription = group.subscription_for(records[0].topic)
        batch_handler = subscription.batch_handler
        assert batch_handler is not None
        decoded = []
        for record in records:
            try:
                event, context = decode(
                    topic=record.topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    partition=record.partition,
                    offset=record.offset,
                )
            except PermanentError:
                return False
            if not isinstance(event, subscription.event_cls):
                return False
            decoded.append((event, context))
        fresh = []
        ids: set[str] = set()  # an event twice in one batch (published again after a timeout) is handled once
        for event, context in decoded:
            if context.event_id in ids or await group.processed.seen(subscription.group, context.event_id):
                continue
            ids.add(context.event_id)
            fresh.append((event, context))
        if fresh:
            await batch_handler(fresh)
            for _, context in fresh:
                await group.processed.mark(subscription.group, context.event_id)
        self.stats.handled += len(fresh)
        self.stats.duplicates_skipped += len(decoded) - len(fresh)
        return True

    async def _dead_letter_undecodable(
        self,
        group: _GroupConsumer | _BroadcastConsumer,
        record: ConsumerRecord[bytes, bytes],
        error: PermanentError,
        *,
        event_id: str | None = None,
    ) -> None:
        key = record.key.decode("utf-8", errors="replace") if record.key is not None else None
        log.error("dead-lettering record %s[%d]@%d: %s", record.topic, record.partition, record.offset, error)
        if record.topic == self.dead_letter_topic:
            log.error("not dead-lettering a record of the dead-letter topic again; skipped")
            return
        await self.publish_dead_letter(
            dead_letter_for(
                reason=f"{group.group_id}: {error}",
                error=error,
                service=self.source,
                attempts=1,
                topic=record.topic,
                key=key,
                value=record.value or b"",
                headers=headers_dict(list(record.headers)),
            ),
            event_id=event_id,
        )
        self.stats.dead_lettered += 1

    def _new_consumer(self, group_id: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-{group_id}",
            group_id=self.group_name(group_id),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            max_poll_records=MAX_POLL_RECORDS,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            **self._client_options,
        )

    async def _partitions_of(self, names: list[str]) -> list[TopicPartition]:
        """Every partition of the topics ``names`` now (partitions added later are read after a reconnect)."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=10_000,
            **self._client_options,
        )
        try:
            await admin.start()
            described = await admin.describe_topics(names)
        finally:
            await admin.close()
        partitions = []
        for entry in described:
            if entry["error_code"] != 0 or not entry["partitions"]:
                raise KafkaError(f"topic {entry['topic']} is not available (error {entry['error_code']})")
            partitions += [TopicPartition(entry["topic"], p["partition"]) for p in entry["partitions"]]
        return sorted(partitions)

    def _new_reader(self, name: str) -> AIOKafkaConsumer:
        """A consumer of no group: partitions are assigned by hand, offsets never committed."""
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-{name}-broadcast",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            **self._client_options,
        )


class _GroupConsumer(ConsumerRebalanceListener):  # type: ignore[misc]
    """One consumer group of a bus: its consumer, its loop, and what a rebalance must wait for."""

    def __init__(self, bus: KafkaBus, group_id: str, subscriptions: list[Subscription]) -> None:
        self.bus = bus
        self.group_id = group_id
        self._by_topic = {bus.topic_name(s.event_cls.topic): s for s in subscriptions}
        self.consumer: AIOKafkaConsumer | None = None
        self.generation = 0  # bumped when partitions are revoked: fetched records from before are stale
        self.assigned = asyncio.Event()
        self._in_flight = asyncio.Lock()  # held while one record is handled
        self.committer: _OffsetCommitter | None = None
        self.processed = bus.processed

    def subscription_for(self, topic: str) -> Subscription:
        return self._by_topic[topic]

    def dead_letter_id(self, record: ConsumerRecord[bytes, bytes]) -> str | None:
        return None  # a fresh id per dead letter

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before giving partitions away: start no more fetched records, let the one in flight finish, and commit
        what was handled."""
        self.generation += 1
        self.assigned.clear()
        try:
            async with asyncio.timeout(self.bus.shutdown_timeout_s), self._in_flight:
                pass
        except TimeoutError:
            log.warning(
                "group %s: handler still running %ss into a rebalance; its record goes to the next owner too",
                self.group_id,
                self.bus.shutdown_timeout_s,
            )
        if self.committer is not None:
            await self.committer.flush(self.bus.shutdown_timeout_s)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("group %s assigned %s", self.group_id, sorted((tp.topic, tp.partition) for tp in assigned))
        if assigned:
            self.assigned.set()

    async def run(self) -> None:
        """Connect (again and again while Kafka is away), consume until the bus stops."""
        backoff = RECONNECT_BACKOFF_S
        while not self.bus._stopping.is_set():
            consumer = self.bus._new_consumer(self.group_id)
            try:
                await self.bus.ensure_topics()
                consumer.subscribe(sorted(self._by_topic), listener=self)
                async with asyncio.timeout(self.bus.connect_timeout_s * 2):
                    await consumer.start()
                self.consumer = consumer
                self.committer = _OffsetCommitter(consumer, self.group_id)
                backoff = RECONNECT_BACKOFF_S
                await self._consume(consumer, self.committer)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("group %s: Kafka consumer failed (%s); reconnecting in %.1fs", self.group_id, exc, backoff)
                await self.bus._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)
            except Exception:  # not swallowed: logged, and the group consumes again from its commits
                log.exception("group %s: consumer loop crashed; restarting it in %.1fs", self.group_id, backoff)
                await self.bus._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)
            finally:
                if self.committer is not None:
                    await self.committer.flush(self.bus.shutdown_timeout_s)  # what was handled stays handled
                self.committer = None
                self.consumer = None
                self.assigned.clear()
                await consumer.stop()  # leaves the group, so its partitions move on at once

    async def _consume(self, consumer: AIOKafkaConsumer, committer: _OffsetCommitter) -> None:
        backoff = self.bus.retry.initial_backoff_s
        batched = any(s.batch_handler is not None for s in self._by_topic.values())
        max_records = BATCH_MAX_POLL_RECORDS if batched else MAX_POLL_RECORDS
        while not self.bus._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=max_records)
            # getmany only returns records of the current assignment; a rebalance from here on makes them stale.
            generation = self.generation
            failed = False
            for tp, records in batches.items():
                if self.bus._stopping.is_set():
                    return  # not committed: the next consumer of the group reads them
                if self.subscription_for(tp.topic).batch_handler is not None and await self._process_batch(
                    committer, records, generation
                ):
                    continue
                for record in records:  # one at a time: a per-event subscription, or a batch not handled as one
                    if self.bus._stopping.is_set():
                        return  # not committed: the next consumer of the group reads it
                    outcome = await self._process(committer, record, generation)
                    if outcome is _Outcome.FAILED:
                        failed = True
                        _seek_back(consumer, tp, record.offset)
                    if outcome is not _Outcome.HANDLED:
                        break  # the rest of this partition's batch is read again, in order
            if failed:
                await self.bus._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)
            elif batches:
                backoff = self.bus.retry.initial_backoff_s

    async def _process(
        self, committer: _OffsetCommitter, record: ConsumerRecord[bytes, bytes], generation: int
    ) -> _Outcome:
        async with self._in_flight:
            if generation != self.generation:
                return _Outcome.STALE
            try:
                await self.bus._handle_record(self, record)
            except Exception:  # not swallowed: logged, nothing committed, the record is read again
                log.exception(
                    "group %s: could not finish %s[%d]@%d; retrying it",
                    self.group_id,
                    record.topic,
                    record.partition,
                    record.offset,
                )
                return _Outcome.FAILED
            committer.handled(record)
            return _Outcome.HANDLED

    async def _process_batch(
        self, committer: _OffsetCommitter, records: list[ConsumerRecord[bytes, bytes]], generation: int
    ) -> bool:
        """A partition's fetched records through the subscription's batch handler, then committed past the last.
        False when they were not handled as one (stale, a record that is not an event, the handler raised): the
        caller then takes them one at a time, with the usual retries and dead letters."""
        async with self._in_flight:
            if generation != self.generation:
                return False
            try:
                handled = await self.bus._handle_batch(self, records)
            except Exception as exc:  # noqa: BLE001 - logged, and each record is delivered on its own
                log.warning(
                    "group %s: batch of %d record(s) of %s[%d] from @%d failed (%r); delivering them one at a time",
                    self.group_id,
                    len(records),
                    records[0].topic,
                    records[0].partition,
                    records[0].offset,
                    exc,
                )
                return False
            if handled:
                committer.handled(records[-1])
            return handled


class _BroadcastConsumer:
    """The broadcast subscriptions of one name: this process reads every partition of their topics from the
    beginning, then follows them. No consumer group, nothing committed: a restart replays the history.

    ``caught_up`` is set once the handled position of every partition reached its end offset as it was at the
    first connection. Handled ids are kept in memory, so a reconnect (which replays from the beginning again)
    and a duplicate record run no handler twice. A record the handler keeps failing on is dead-lettered and
    skipped, as in a group; its dead letter's id is derived from the record, so every replica and every replay
    report it as the same event. A failure of the bus itself (dead-letter topic unreachable) retries the record.
    """

    def __init__(self, bus: KafkaBus, name: str, subscriptions: list[Subscription]) -> None:
        self.bus = bus
        self.group_id = name
        self._by_topic = {bus.topic_name(s.event_cls.topic): s for s in subscriptions}
        self.processed = InMemoryProcessedEventStore()
        self.assigned = asyncio.Event()
        self.caught_up = asyncio.Event()
        self._end_at_start: dict[TopicPartition, int] | None = None

    def subscription_for(self, topic: str) -> Subscription:
        return self._by_topic[topic]

    def dead_letter_id(self, record: ConsumerRecord[bytes, bytes]) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.group_id}/{record.topic}/{record.partition}/{record.offset}"))

    async def run(self) -> None:
        backoff = RECONNECT_BACKOFF_S
        while not self.bus._stopping.is_set():
            consumer = self.bus._new_reader(self.group_id)
            try:
                await self.bus.ensure_topics()
                async with asyncio.timeout(self.bus.connect_timeout_s * 2):
                    partitions = await self.bus._partitions_of(sorted(self._by_topic))
                    await consumer.start()
                    consumer.assign(partitions)
                    await consumer.seek_to_beginning(*partitions)
                    if self._end_at_start is None:
                        self._end_at_start = await consumer.end_offsets(partitions)
                log.info("broadcast %s reading %d partition(s) from the beginning", self.group_id, len(partitions))
                self.assigned.set()
                backoff = RECONNECT_BACKOFF_S
                await self._consume(consumer, self._end_at_start)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning(
                    "broadcast %s: Kafka consumer failed (%s); reconnecting in %.1fs", self.group_id, exc, backoff
                )
                await self.bus._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)
            except Exception:  # not swallowed: logged, and the subscription reads again
                log.exception("broadcast %s: consumer loop crashed; restarting it in %.1fs", self.group_id, backoff)
                await self.bus._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)
            finally:
                self.assigned.clear()
                await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer, end_at_start: dict[TopicPartition, int]) -> None:
        backoff = self.bus.retry.initial_backoff_s
        await self._check_caught_up(consumer, end_at_start)  # an empty topic: at once, not after a poll
        while not self.bus._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_POLL_RECORDS)
            failed = False
            for tp, records in batches.items():
                for record in records:
                    if self.bus._stopping.is_set():
                        return
                    try:
                        await self.bus._handle_record(self, record)
                    except Exception:  # not swallowed: logged, and the record is read again
                        log.exception(
                            "broadcast %s: could not finish %s[%d]@%d; retrying it",
                            self.group_id,
                            record.topic,
                            record.partition,
                            record.offset,
                        )
                        failed = True
                        _seek_back(consumer, tp, record.offset)
                        break
            if failed:
                await self.bus._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)
                continue
            backoff = self.bus.retry.initial_backoff_s
            await self._check_caught_up(consumer, end_at_start)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer, end_at_start: dict[TopicPartition, int]) -> None:
        if not self.caught_up.is_set() and await _reached(consumer, end_at_start):
            log.info("broadcast %s caught up with %s", self.group_id, sorted(self._by_topic))
            self.caught_up.set()


async def _reached(consumer: AIOKafkaConsumer, end_offsets: dict[TopicPartition, int]) -> bool:
    """Whether the consumer's position is at or past ``end_offsets`` on every partition (compaction leaves gaps
    in offsets; the position steps over them)."""
    for tp, end in end_offsets.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def ensure_topic_configs(admin: AIOKafkaAdminClient, wanted: dict[str, dict[str, str]]) -> list[str]:
    """Give each topic of ``wanted`` (name -> configs) the configs it lacks; returns the topics altered.

    aiokafka has only the legacy AlterConfigs, which replaces every dynamic config of a topic, so the topic's
    other dynamic configs are read first and written back with the new ones.
    """
    if not wanted:
        return []
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
    altered: list[str] = []
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            if resource["error_code"] != 0 or name not in wanted:
                continue
            entries = resource["config_entries"]
            current = {entry["config_names"]: entry["config_value"] for entry in entries}
            if not all(key in current for key in wanted[name]):
                log.warning("configs of topic %s not visible yet; not checked", name)  # a topic created a moment ago
                continue
            if all(current[key] == value for key, value in wanted[name].items()):
                continue
            dynamic = {e["config_names"]: e["config_value"] for e in entries if e["config_source"] == _DYNAMIC_TOPIC}
            configs = dynamic | wanted[name]
            [reply] = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs)])
            errors = [entry for entry in reply.to_object()["resources"] if entry["error_code"] != 0]
            if errors:
                log.warning("could not set %s on topic %s: %s", wanted[name], name, errors)
                continue
            log.warning("topic %s had %s; set %s", name, {k: current.get(k) for k in wanted[name]}, wanted[name])
            altered.append(name)
    return altered


class _OffsetCommitter:
    """Commits the offsets of handled records without holding up the next record.

    A commit is a broker round trip (several ms: Kafka's group coordinator lingers before appending it); awaited
    per record it sat in the consumer loop and capped the rate a group could follow. Here one commit request is
    in flight at a time and carries, per partition, the offset past the last record handled by then. An offset
    is committed only once its record's effects are done, so delivery stays at least once; a crash can leave
    uncommitted the records handled during one commit round trip (instead of one), which consumers skip as
    duplicates. A failed commit is raised by the next ``handled`` or ``flush``, so the group reconnects.
    """

    def __init__(self, consumer: AIOKafkaConsumer, group_id: str) -> None:
        self.consumer = consumer
        self.group_id = group_id
        self._pending: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def handled(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """``record``'s effects are done: commit past it (soon, in the background)."""
        self._raise_failure()
        self._pending[TopicPartition(record.topic, record.partition)] = record.offset + 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._commit_pending(), name=f"kafka-commit:{self.group_id}")

    async def flush(self, timeout_s: float) -> None:
        """Wait until what was handled so far is committed (before a rebalance or a stop), at most ``timeout_s``.
        A commit that fails or takes longer is logged: those records are read again by the partition's next reader."""
        task, self._task = self._task, None
        if task is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await task  # cancelled at the deadline
        except TimeoutError:
            log.warning(
                "group %s: offsets not committed within %ss; redelivering those records", self.group_id, timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - logged; the uncommitted records are delivered again
            log.warning("group %s: committing offsets failed (%r); redelivering those records", self.group_id, exc)

    async def _commit_pending(self) -> None:
        while self._pending:
            offsets, self._pending = self._pending, {}
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # A lost partition is not an error: its new owner reads the records again and skips what was done.
                log.warning("group %s: commit of %s failed (%s); they will be redelivered", self.group_id, offsets, exc)

    def _raise_failure(self) -> None:
        """A commit that failed (Kafka away) stops this consumer, as an awaited one did: the group reconnects."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return
        self._task = None
        error = task.exception()
        if error is not None:
            raise error


def _seek_back(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
    # IllegalStateError: the partition was revoked meanwhile; its new owner starts from the last commit.
    with contextlib.suppress(IllegalStateError):
        consumer.seek(tp, offset)


def _sender_died(producer: AIOKafkaProducer) -> bool:
    # aiokafka keeps no public flag; a sender task that ended (fatal error such as OutOfOrderSequenceNumber)
    # means every later send would hang, so the bus replaces the producer.
    task = producer._sender.sender_task
    return task is not None and task.done()


def _by_group(subscriptions: Iterable[Subscription]) -> dict[str, list[Subscription]]:
    groups: dict[str, list[Subscription]] = {}
    for subscription in subscriptions:
        members = groups.setdefault(subscription.group, [])
        if any(member.event_cls is subscription.event_cls for member in members):
            raise ValueError(
                f"group {subscription.group!r} subscribes {subscription.event_cls.__name__} twice; "
                "use one handler per event class and group"
            )
        members.append(subscription)
    return groups


@dataclass
class _OpenBatch:
    """A record batch ``enqueue_many`` fills for one partition, and which of its records are in it."""

    builder: BatchBuilder
    indices: list[int] = field(default_factory=list)

    @classmethod
    def new(cls) -> _OpenBatch:
        # ``producer.create_batch()`` would give the producer's batch size (16 KiB); the same builder, larger.
        return cls(BatchBuilder(BATCH_BYTES, _NO_COMPRESSION))

    def add(self, record: EncodedRecord) -> bool:
        """Append ``record``; False when the batch is full."""
        appended = self.builder.append(timestamp=None, key=record.key, value=record.value, headers=record.headers)
        return appended is not None


def _fits_a_batch(record: EncodedRecord) -> bool:
    """Whether ``record`` is at most ``BATCH_RECORD_MAX_BYTES`` (its value is most of it: the rest is counted only
    when the value alone is large)."""
    size = len(record.value)
    if size <= BATCH_RECORD_MAX_BYTES // 2:
        return True
    size += len(record.key or b"") + sum(len(name) + len(value) for name, value in record.headers)
    return size <= BATCH_RECORD_MAX_BYTES
