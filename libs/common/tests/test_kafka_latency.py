"""The Kafka bus against the real broker: events reach a steady consumer in milliseconds, and stay so.

* An offset commit is a broker round trip (about 7 ms here: Kafka 4's group coordinator lingers 5 ms before it
  appends a commit). Awaited after every record, it sat in the consumer loop: a group could follow at most
  1 / (handler time + commit time) events per second, and a slow coordinator stalled every event behind it.
* With aiokafka's default fetch wait (500 ms), one slow event left its partition out of the next fetch request,
  and the events behind it then came in bursts, each delayed by up to half a second, for as long as they kept
  coming (docs/benchmarks-e2e.md).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from common_samples import telemetry_received
from edgeloop_common.bus.base import EventContext, RetryPolicy
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import TelemetryReceived
from edgeloop_common.idempotency import InMemoryProcessedEventStore

from conftest import FAST_GROUP, eventually

pytestmark = pytest.mark.kafka

COMMIT_DELAY_S = 0.3
EVENTS = 10


def _bus(kafka_bootstrap: str, prefix: str) -> KafkaBus:
    return KafkaBus(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=prefix,
        source="commit-test",
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2),
        processed=InMemoryProcessedEventStore(),  # a new bus remembers nothing: only commits prevent a redo
        **FAST_GROUP,
    )


@pytest.fixture
def slow_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every offset commit takes COMMIT_DELAY_S longer, as with a busy group coordinator."""
    commit = AIOKafkaConsumer.commit

    async def slow_commit(self: AIOKafkaConsumer, offsets: Any = None) -> None:
        await asyncio.sleep(COMMIT_DELAY_S)
        await commit(self, offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", slow_commit)


@pytest.mark.usefixtures("slow_commits")
async def test_slow_commits_do_not_hold_up_events_and_none_is_lost(kafka_bootstrap: str, kafka_topics: str) -> None:
    handled_at: list[float] = []
    redone: list[int] = []

    async def handle(event: TelemetryReceived, context: EventContext) -> None:
        handled_at.append(time.monotonic())

    async def handle_after(event: TelemetryReceived, context: EventContext) -> None:
        redone.append(int(event.readings["seq"] or 0))

    producer = _bus(kafka_bootstrap, kafka_topics)
    consumer = _bus(kafka_bootstrap, kafka_topics)
    consumer.subscribe(TelemetryReceived, handle, group="drift")
    await consumer.start()
    await consumer.wait_until_assigned()
    try:
        acks = [await producer.enqueue(telemetry_received("cam-1", seq=seq)) for seq in range(EVENTS)]
        await asyncio.gather(*acks)
        await eventually(lambda: len(handled_at) == EVENTS, timeout_s=30, what="every event handled")
    finally:
        await consumer.stop()  # waits for the commits in flight

    # Awaited one by one, the commits alone would have spread the events over (EVENTS - 1) x 0.3 s = 2.7 s.
    assert handled_at[-1] - handled_at[0] < (EVENTS - 1) * COMMIT_DELAY_S / 2

    # Nothing handled went uncommitted: a new consumer of the group starts after the last event.
    after = _bus(kafka_bootstrap, kafka_topics)
    after.subscribe(TelemetryReceived, handle_after, group="drift")
    await after.start()
    try:
        await after.wait_until_assigned()
        await producer.publish(telemetry_received("cam-1", seq=EVENTS))
        await eventually(lambda: EVENTS in redone, timeout_s=30, what="the new event handled")
    finally:
        await after.stop()
        await producer.stop()
    assert redone == [EVENTS]


async def test_one_slow_event_does_not_leave_the_group_lagging(kafka_bootstrap: str, kafka_topics: str) -> None:
    """Events at 20/s, handled in 15 ms each; one handler takes 200 ms. The events after it catch up at once."""
    rate, count, slow_at = 20.0, 100, 30
    lag_ms: list[float] = []

    async def handle(event: TelemetryReceived, context: EventContext) -> None:
        lag_ms.append((time.time() - float(event.readings["sent_at"] or 0)) * 1000.0)
        await asyncio.sleep(0.2 if len(lag_ms) == slow_at else 0.015)

    producer = _bus(kafka_bootstrap, kafka_topics)
    consumer = _bus(kafka_bootstrap, kafka_topics)
    consumer.subscribe(TelemetryReceived, handle, group="drift")
    await consumer.start()
    try:
        await consumer.wait_until_assigned()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for seq in range(count):
            await asyncio.sleep(max(0.0, start + seq / rate - loop.time()))
            event = TelemetryReceived(
                device_id="cam-1", site_id="site-a", received_at=datetime.now(UTC), readings={"sent_at": time.time()}
            )
            await producer.enqueue(event)
        await eventually(lambda: len(lag_ms) == count, timeout_s=60, what="every event handled")
    finally:
        await consumer.stop()
        await producer.stop()

    # One second after the slow event every event is handled within milliseconds of being published. With
    # a 500 ms fetch wait they kept arriving in bursts: a median lag of about 300 ms, to the end.
    after = lag_ms[slow_at + 20 :]
    assert statistics.median(after) < 50.0, f"lag (ms) after the slow event: {[round(lag) for lag in after]}"
