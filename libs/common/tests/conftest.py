"""Helpers for the bus tests: reading raw records, cleaning up each test's topics, waiting for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

RawRecord = ConsumerRecord[bytes, bytes]

# Short group timeouts so a rebalance (a consumer killed, a second one joining) takes seconds, not a minute.
FAST_GROUP = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000}


async def read_records(bootstrap: str, topic: str, *, count: int, timeout_s: float = 20.0) -> list[RawRecord]:
    """The first ``count`` records of ``topic`` (no consumer group), in (partition, offset) order."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    records: list[RawRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    assert len(records) >= count, f"expected {count} records on {topic}, found {len(records)} in {timeout_s}s"
    return sorted(records, key=lambda record: (record.partition, record.offset))


async def eventually(condition: Callable[[], bool], *, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def kafka_topics(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[str]:
    """The test's topic prefix; its topics are deleted afterwards so the shared broker does not fill up."""
    yield topic_prefix
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        mine = [name for name in await admin.list_topics() if name.startswith(topic_prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
