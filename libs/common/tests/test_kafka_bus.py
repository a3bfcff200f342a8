"""The Kafka bus against the real broker: what a consumer and an operator with kcat would observe.

Each test has its own topic prefix (fresh topics, fresh offsets) and deletes its topics afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from common_samples import image_received, telemetry_received
from edgeloop_common import topics
from edgeloop_common.bus.base import BusUnavailableError, EventContext, Outgoing, PermanentError, RetryPolicy
from edgeloop_common.bus.codec import decode, encode
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import DeadLetter, ImageReceived, TelemetryReceived
from edgeloop_common.idempotency import InMemoryProcessedEventStore, SqlProcessedEventStore

from tests.helpers import FAST_GROUP, eventually, read_topic_records

pytestmark = pytest.mark.kafka

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)
BusFactory = Callable[..., KafkaBus]


@pytest.fixture
async def make_bus(kafka_bootstrap: str, kafka_topics: str) -> AsyncIterator[BusFactory]:
    """Build buses on the test's prefix; every one is stopped at the end."""
    buses: list[KafkaBus] = []

    def make(**options: Any) -> KafkaBus:
        settings: dict[str, Any] = {
            "bootstrap_servers": kafka_bootstrap,
            "topic_prefix": kafka_topics,
            "source": "bus-test",
            "retry": FAST_RETRY,
            **FAST_GROUP,
            **options,
        }
        bus = KafkaBus(**settings)
        buses.append(bus)
        return bus

    yield make
    await asyncio.gather(*(bus.stop() for bus in buses))


async def test_round_trip_with_cloudevents_headers_and_device_key(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    received: list[tuple[object, EventContext]] = []

    async def handle(event: ImageReceived | TelemetryReceived, context: EventContext) -> None:
        received.append((event, context))

    bus = make_bus(source="ingest")
    bus.subscribe(ImageReceived, handle, group="gateway")
    bus.subscribe(TelemetryReceived, handle, group="gateway")  # one consumer, two topics
    await bus.start()
    image = image_received("cam-3")
    image_id = await bus.publish(image, traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    telemetry_id = await bus.publish(telemetry_received("cam-3"))
    await eventually(lambda: len(received) == 2, what="both events handled")

    by_id = {context.event_id: (event, context) for event, context in received}
    event, context = by_id[image_id]
    assert event == image
    assert context.key == "cam-3"
    assert context.source == "ingest"
    assert context.topic == f"{kafka_topics}{topics.IMAGES_RECEIVED}"
    assert context.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert isinstance(by_id[telemetry_id][0], TelemetryReceived)

    [record] = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.IMAGES_RECEIVED}", count=1)
    headers = dict(record.headers)
    assert record.key == b"cam-3"
    assert headers["ce_id"] == image_id.encode()
    assert headers["ce_type"] == b"io.edgeloop.images.received.v1"
    assert headers["ce_source"] == b"ingest"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["content-type"] == b"application/json"
    assert headers["ce_time"].endswith(b"Z")
    assert headers["traceparent"] == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_topics_are_created_with_the_prefix(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    bus = make_bus(topic_partitions=3)
    await bus.start()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([f"{kafka_topics}{name}" for name in topics.ALL_KAFKA_TOPICS])
    finally:
        await admin.close()
    partitions = {entry["topic"]: len(entry["partitions"]) for entry in described if entry["error_code"] == 0}
    assert partitions == {f"{kafka_topics}{name}": 3 for name in topics.ALL_KAFKA_TOPICS}


async def test_poison_records_are_dead_lettered_and_the_next_event_is_handled(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    topic = f"{kafka_topics}{topics.IMAGES_RECEIVED}"
    handled: list[str] = []

    async def handle(event: ImageReceived, context: EventContext) -> None:
        handled.append(event.sample_id)

    bus = make_bus(source="gateway")
    bus.subscribe(ImageReceived, handle, group="gateway")
    await bus.start()
    good_but_unparsable = encode(image_received("cam-9"), source="ingest")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:  # all on key cam-9: one partition, so the good event comes after both poison records
        await producer.send_and_wait(topic, b"\x00\xffnot an event", key=b"cam-9")
        await producer.send_and_wait(topic, b'{"sample_id": ', key=b"cam-9", headers=good_but_unparsable.headers)
    finally:
        await producer.stop()
    await bus.publish(image_received("cam-9", sample_id="s-after-poison"))

    await eventually(lambda: handled == ["s-after-poison"], what="the event after the poison handled")
    dead_records = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.DEAD_LETTER}", count=2)
    dead = [decode(topic=r.topic, key=r.key, value=r.value, headers=list(r.headers))[0] for r in dead_records]
    assert all(isinstance(letter, DeadLetter) for letter in dead)
    by_value = {base64.b64decode(letter.original_value_b64): letter for letter in dead}  # type: ignore[attr-defined]
    garbage = by_value[b"\x00\xffnot an event"]
    assert "gateway: not a CloudEvents binary-mode record: missing header(s) ce_id" in garbage.reason
    assert (garbage.original_topic, garbage.original_key, garbage.service) == (topic, "cam-9", "gateway")
    assert garbage.original_headers == {}
    bad_json = by_value[b'{"sample_id": ']
    assert "body is not JSON" in bad_json.reason
    assert bad_json.original_headers["ce_id"] == good_but_unparsable.event_id
    assert {record.key for record in dead_records} == {b"cam-9"}


async def test_a_handler_failing_twice_then_succeeding_is_handled_once(make_bus: BusFactory) -> None:
    attempts: list[int] = []
    effects: list[str] = []

    async def flaky(event: ImageReceived, context: EventContext) -> None:
        attempts.append(context.attempt)
        if context.attempt <= 2:
            raise ConnectionError("model server not ready")
        effects.append(context.event_id)

    bus = make_bus()
    bus.subscribe(ImageReceived, flaky, group="gateway")
    await bus.start()
    event_id = await bus.publish(image_received())
    await eventually(lambda: effects == [event_id], what="the event handled")
    await asyncio.sleep(0.5)  # room for a wrong redelivery to show up

    assert attempts == [1, 2, 3]
    assert effects == [event_id]
    assert bus.stats.dead_lettered == 0


async def test_retries_run_out_then_a_dead_letter_with_attempts_and_the_consumer_moves_on(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    handled: list[str] = []

    async def handle(event: ImageReceived, context: EventContext) -> None:
        if event.sample_id == "s-bad":
            raise ValueError("cannot resize a 0x0 image")
        if event.sample_id == "s-rejected":
            raise PermanentError("label set unknown")
        handled.append(event.sample_id)

    bus = make_bus(source="gateway")
    bus.subscribe(ImageReceived, handle, group="gateway")
    await bus.start()
    for sample_id in ("s-bad", "s-rejected", "s-good"):
        await bus.publish(image_received("cam-2", sample_id=sample_id))

    await eventually(lambda: handled == ["s-good"], what="the good event handled")
    records = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.DEAD_LETTER}", count=2)
    letters = [decode(topic=r.topic, key=r.key, value=r.value, headers=list(r.headers))[0] for r in records]
    assert [(d.reason, d.error_type, d.attempts) for d in letters] == [  # type: ignore[attr-defined]
        ("gateway: cannot resize a 0x0 image", "ValueError", 3),
        ("gateway: label set unknown", "PermanentError", 1),
    ]
    assert {(d.device_id, d.site_id) for d in letters} == {("cam-2", "site-a")}  # type: ignore[attr-defined]


async def test_a_duplicate_delivery_has_one_effect(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str, tmp_path: Any
) -> None:
    effects: list[str] = []

    async def handle(event: ImageReceived, context: EventContext) -> None:
        effects.append(context.event_id)

    store = SqlProcessedEventStore(f"sqlite:///{tmp_path / 'processed.sqlite3'}")
    bus = make_bus(processed=store)
    bus.subscribe(ImageReceived, handle, group="gateway")
    await bus.start()
    await bus.publish(image_received(), event_id="evt-dup")
    await bus.publish(image_received(), event_id="evt-dup")  # the same event, delivered twice
    await bus.publish(image_received(), event_id="evt-next")

    await eventually(lambda: "evt-next" in effects, what="the event after the duplicate handled")
    records = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.IMAGES_RECEIVED}", count=3)
    assert [dict(r.headers)["ce_id"] for r in records] == [b"evt-dup", b"evt-dup", b"evt-next"]
    assert effects == ["evt-dup", "evt-next"]
    assert bus.stats.duplicates_skipped == 1


async def test_enqueue_keeps_call_order_and_resolves_on_the_ack(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    bus = make_bus()
    acks = [await bus.enqueue(telemetry_received("cam-5", seq=seq)) for seq in range(200)]
    event_ids = await asyncio.gather(*acks)

    records = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.TELEMETRY_RECEIVED}", count=200)
    assert [dict(r.headers)["ce_id"].decode() for r in records] == event_ids
    assert len({r.partition for r in records}) == 1
    assert bus.stats.published == 200


async def test_graceful_stop_commits_what_was_handled(make_bus: BusFactory) -> None:
    first: list[int] = []
    second: list[int] = []

    async def handle_first(event: TelemetryReceived, context: EventContext) -> None:
        first.append(int(event.readings["seq"] or 0))

    async def handle_second(event: TelemetryReceived, context: EventContext) -> None:
        second.append(int(event.readings["seq"] or 0))

    before = make_bus(processed=InMemoryProcessedEventStore())
    before.subscribe(TelemetryReceived, handle_first, group="drift")
    await before.start()
    for seq in range(6):
        await before.publish(telemetry_received(f"cam-{seq % 3}", seq=seq))
    await eventually(lambda: len(first) == 6, what="first consumer handled all")
    await before.stop()

    # A new consumer of the group with an empty processed-event store: only the commits keep it from redoing.
    after = make_bus(processed=InMemoryProcessedEventStore())
    after.subscribe(TelemetryReceived, handle_second, group="drift")
    await after.start()
    for seq in range(6, 9):  # same keys, so the same partitions: a redelivery would come before these
        await after.publish(telemetry_received(f"cam-{seq % 3}", seq=seq))
    await eventually(lambda: len(second) >= 3, what="second consumer handled the new events")

    assert sorted(first) == list(range(6))
    assert sorted(second) == [6, 7, 8]


async def test_a_rebalance_loses_nothing_and_redoes_nothing(make_bus: BusFactory) -> None:
    handled: list[tuple[str, str, int]] = []

    def handler(name: str) -> Callable[[TelemetryReceived, EventContext], Any]:
        async def handle(event: TelemetryReceived, context: EventContext) -> None:
            await asyncio.sleep(0.05)
            handled.append((name, event.device_id, int(event.readings["seq"] or 0)))

        return handle

    one = make_bus(processed=InMemoryProcessedEventStore())
    one.subscribe(TelemetryReceived, handler("one"), group="drift")
    await one.start()
    for seq in range(120):
        await one.enqueue(telemetry_received(f"cam-{seq % 6}", seq=seq))
    await eventually(lambda: len(handled) >= 10, what="first consumer busy")

    two = make_bus(processed=InMemoryProcessedEventStore())
    two.subscribe(TelemetryReceived, handler("two"), group="drift")
    await two.start()
    await eventually(lambda: len({seq for _, _, seq in handled}) == 120, timeout_s=40, what="all handled")
    await asyncio.sleep(0.5)

    assert {name for name, _, _ in handled} == {"one", "two"}, "the second consumer took partitions over"
    seqs = [seq for _, _, seq in handled]
    assert len(seqs) == len(set(seqs)) == 120, "every event handled exactly once across the rebalance"
    for device in {device for _, device, _ in handled}:
        per_device = [seq for _, d, seq in handled if d == device]
        assert per_device == sorted(per_device), f"order of {device} kept"


class _Gate:
    """A TCP port that refuses connections until opened, then forwards to the broker."""

    def __init__(self, target: str) -> None:
        host, _, port = target.split(",")[0].rpartition(":")
        self.target = (host, int(port))
        self.server: asyncio.Server | None = None
        self.port = 0

    async def reserve_port(self) -> int:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return self.port

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_kafka_away_at_start_then_back(make_bus: BusFactory, kafka_bootstrap: str) -> None:
    gate = _Gate(kafka_bootstrap)
    port = await gate.reserve_port()
    handled: list[str] = []

    async def handle(event: ImageReceived, context: EventContext) -> None:
        handled.append(event.sample_id)

    bus = make_bus(bootstrap_servers=f"127.0.0.1:{port}", publish_timeout_s=3.0)
    bus.subscribe(ImageReceived, handle, group="gateway")
    await bus.start()  # Kafka away: not an error

    started = time.monotonic()
    with pytest.raises(BusUnavailableError, match="unreachable"):
        await bus.publish(image_received(sample_id="s-lost"))
    assert time.monotonic() - started < 1.0, "publish fails fast while Kafka is away"
    assert await bus.ready() is False

    await gate.open()
    try:
        deadline = time.monotonic() + 10
        while not await bus.ready():
            assert time.monotonic() < deadline, "ready() did not see Kafka come back"
            await asyncio.sleep(0.2)
        await bus.publish(image_received(sample_id="s-back"))
        await eventually(lambda: handled == ["s-back"], timeout_s=30, what="consumer handled after Kafka returned")
    finally:
        await gate.close()


async def test_a_poison_record_too_big_to_copy_is_dead_lettered_without_its_value(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    topic = f"{kafka_topics}{topics.IMAGES_RECEIVED}"
    handled: list[str] = []

    async def handle(event: ImageReceived, context: EventContext) -> None:
        handled.append(event.sample_id)

    bus = make_bus(source="gateway")
    bus.subscribe(ImageReceived, handle, group="gateway")
    await bus.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:  # fits in a record, but not once base64-encoded inside a DeadLetter
        await producer.send_and_wait(topic, b"\xff" * 900_000, key=b"cam-6")
    finally:
        await producer.stop()
    await bus.publish(image_received("cam-6", sample_id="s-after-big"))

    await eventually(lambda: handled == ["s-after-big"], what="the event after the big poison handled")
    [record] = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.DEAD_LETTER}", count=1)
    letter = decode(topic=record.topic, key=record.key, value=record.value, headers=list(record.headers))[0]
    assert isinstance(letter, DeadLetter)
    assert letter.original_value_b64 == ""
    assert letter.original_size_bytes == 900_000
    assert "missing header" in letter.reason and "900000 bytes not kept" in letter.reason


# -- batches: enqueue_many and subscribe_batch ----------------------------------------------------------------------


def seq_of(event: TelemetryReceived) -> int:
    return int(event.readings["seq"] or 0)


async def publish_all(bus: KafkaBus, events: Sequence[TelemetryReceived]) -> None:
    await asyncio.gather(*await bus.enqueue_many([Outgoing(event) for event in events]))


async def test_enqueue_many_hands_records_over_as_batches_in_order_on_each_keys_partition(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    bus = make_bus()
    alone = await bus.publish(telemetry_received("cam-0", seq=-1))  # started; where enqueue puts cam-0
    producer = bus._producer
    assert producer is not None
    sent_alone: list[str] = []
    send = producer.send

    async def counted_send(topic: str, *args: Any, **kwargs: Any) -> Any:
        sent_alone.append(topic)
        return await send(topic, *args, **kwargs)

    producer.send = counted_send  # type: ignore[method-assign]
    big = DeadLetter(
        reason="a large one",
        error_type="Rejected",
        service="bus-test",
        attempts=1,
        original_topic="t",
        original_value_b64=base64.b64encode(b"x" * 100_000).decode(),
        original_size_bytes=100_000,
    )
    outgoing = [Outgoing(telemetry_received(f"cam-{i % 5}", seq=i)) for i in range(300)]
    outgoing.insert(150, Outgoing(big, key="cam-3"))
    acks = await bus.enqueue_many(outgoing)
    event_ids = await asyncio.gather(*acks)

    assert sent_alone == [f"{kafka_topics}{topics.DEAD_LETTER}"]  # the big one alone; the others in batches
    records = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.TELEMETRY_RECEIVED}", count=301)
    by_id = {dict(r.headers)["ce_id"].decode(): r for r in records}
    assert set(by_id) == {alone, *[i for i, o in zip(event_ids, outgoing, strict=True) if o.event is not big]}
    assert len(records) == 301  # each once
    partition_of_cam_0 = by_id[alone].partition
    for device in [f"cam-{i}" for i in range(5)]:
        mine = [r for r in records if r.key == device.encode()]
        assert len({r.partition for r in mine}) == 1, f"{device} on one partition"
        sequence = [int(json_readings(r)["seq"]) for r in mine]
        assert sequence == sorted(sequence), f"{device} in order"
    assert {r.partition for r in records if r.key == b"cam-0"} == {partition_of_cam_0}  # where enqueue puts it
    assert bus.stats.published == 302


def json_readings(record: Any) -> dict[str, Any]:
    event = decode(topic=record.topic, key=record.key, value=record.value, headers=list(record.headers))[0]
    assert isinstance(event, TelemetryReceived)
    return dict(event.readings)


async def test_enqueue_many_while_kafka_is_away_fails_every_future_at_once(
    make_bus: BusFactory, kafka_bootstrap: str
) -> None:
    gate = _Gate(kafka_bootstrap)
    port = await gate.reserve_port()  # nothing listens there
    bus = make_bus(bootstrap_servers=f"127.0.0.1:{port}", publish_timeout_s=3.0)
    started = time.monotonic()
    acks = await bus.enqueue_many([Outgoing(telemetry_received(seq=i)) for i in range(20)])
    results = await asyncio.gather(*acks, return_exceptions=True)
    assert time.monotonic() - started < 2.0
    assert all(isinstance(result, BusUnavailableError) for result in results), results


async def test_a_batch_subscription_gets_each_partitions_records_in_order_once_and_commits(
    make_bus: BusFactory,
) -> None:
    batches: list[list[tuple[str, int]]] = []

    async def handle(deliveries: Sequence[tuple[TelemetryReceived, EventContext]]) -> None:
        batches.append([(event.device_id, seq_of(event)) for event, _ in deliveries])

    publisher = make_bus()
    await asyncio.gather(
        *await publisher.enqueue_many([Outgoing(telemetry_received(f"cam-{i % 6}", seq=i)) for i in range(300)])
    )
    consumer = make_bus(processed=InMemoryProcessedEventStore())
    consumer.subscribe_batch(TelemetryReceived, handle, group="scorer")
    await consumer.start()
    await eventually(lambda: sum(len(b) for b in batches) >= 300, timeout_s=30, what="300 handled")
    await consumer.stop()

    handled = [item for batch in batches for item in batch]
    assert sorted(seq for _, seq in handled) == list(range(300)), "each once"
    assert max(len(batch) for batch in batches) > 1, "handled in batches"
    for device in {device for device, _ in handled}:
        sequence = [seq for d, seq in handled if d == device]
        assert sequence == sorted(sequence), f"{device} in order"
    assert consumer.stats.handled == 300

    # Committed: the group's next consumer, with an empty processed-event store, gets only what is new.
    later: list[int] = []

    async def handle_later(deliveries: Sequence[tuple[TelemetryReceived, EventContext]]) -> None:
        later.extend(seq_of(event) for event, _ in deliveries)

    after = make_bus(processed=InMemoryProcessedEventStore())
    after.subscribe_batch(TelemetryReceived, handle_later, group="scorer")
    await after.start()
    await publisher.publish(telemetry_received("cam-1", seq=1000))
    await eventually(lambda: later == [1000], what="only the new event")


async def test_a_poison_record_in_a_batch_is_dead_lettered_and_the_others_handled_once(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    handled: list[int] = []

    async def handle(deliveries: Sequence[tuple[TelemetryReceived, EventContext]]) -> None:
        handled.extend(seq_of(event) for event, _ in deliveries)

    topic = f"{kafka_topics}{topics.TELEMETRY_RECEIVED}"
    publisher = make_bus()
    await publisher.publish(telemetry_received("cam-1", seq=0))  # creates the topics
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for seq in range(1, 40):
            if seq == 20:
                await producer.send_and_wait(topic, b"not an event", key=b"cam-1")
            record = encode(telemetry_received("cam-1", seq=seq), source="test")
            await producer.send_and_wait(topic, record.value, key=record.key, headers=record.headers)
    finally:
        await producer.stop()
    consumer = make_bus(processed=InMemoryProcessedEventStore())
    consumer.subscribe_batch(TelemetryReceived, handle, group="scorer")
    await consumer.start()

    await eventually(lambda: len(handled) >= 40, what="the 40 events handled")
    [record] = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.DEAD_LETTER}", count=1)
    letter = decode(topic=record.topic, key=record.key, value=record.value, headers=list(record.headers))[0]
    assert isinstance(letter, DeadLetter) and "not a CloudEvents" in letter.reason
    await asyncio.sleep(0.5)
    assert handled == list(range(40)), "each once, in order"


async def test_a_failing_batch_is_delivered_again_one_event_at_a_time(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    handled: list[int] = []
    calls: list[int] = []

    async def handle(deliveries: Sequence[tuple[TelemetryReceived, EventContext]]) -> None:
        calls.append(len(deliveries))
        if any(seq_of(event) == 13 for event, _ in deliveries):  # raises before any effect
            raise ValueError("reading 13 is unreadable")
        handled.extend(seq_of(event) for event, _ in deliveries)

    publisher = make_bus()
    await asyncio.gather(
        *await publisher.enqueue_many([Outgoing(telemetry_received("cam-2", seq=i)) for i in range(30)])
    )
    consumer = make_bus(processed=InMemoryProcessedEventStore())
    consumer.subscribe_batch(TelemetryReceived, handle, group="scorer")
    await consumer.start()

    await eventually(lambda: len(handled) >= 29, what="the 29 good events handled")
    [record] = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.DEAD_LETTER}", count=1)
    letter = decode(topic=record.topic, key=record.key, value=record.value, headers=list(record.headers))[0]
    assert isinstance(letter, DeadLetter)
    assert "reading 13 is unreadable" in letter.reason and letter.attempts == FAST_RETRY.max_attempts
    await asyncio.sleep(0.5)
    assert handled == [seq for seq in range(30) if seq != 13], "the others each once, in order"
    assert calls.count(1) >= FAST_RETRY.max_attempts  # the batch's events then came one at a time


async def test_an_event_twice_in_one_batch_is_handled_once(make_bus: BusFactory) -> None:
    handled: list[str] = []

    async def handle(deliveries: Sequence[tuple[TelemetryReceived, EventContext]]) -> None:
        handled.extend(context.event_id for _, context in deliveries)

    publisher = make_bus()
    event = telemetry_received("cam-3", seq=1)
    acks = await publisher.enqueue_many([Outgoing(event, event_id="evt-twice"), Outgoing(event, event_id="evt-twice")])
    await asyncio.gather(*acks)
    await publisher.publish(telemetry_received("cam-3", seq=2), event_id="evt-after")
    consumer = make_bus(processed=InMemoryProcessedEventStore())
    consumer.subscribe_batch(TelemetryReceived, handle, group="scorer")
    await consumer.start()

    await eventually(lambda: "evt-after" in handled, what="the events handled")
    assert handled == ["evt-twice", "evt-after"]
    assert consumer.stats.duplicates_skipped == 1
