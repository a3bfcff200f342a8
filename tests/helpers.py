"""Helpers shared by the tests of every package: the real Kafka and PostgreSQL, and waiting for a condition.

Import them as ``from tests.helpers import ...`` (the root conftest.py puts the repository root on sys.path
and builds its ``kafka_topics`` and ``fresh_postgres_url`` fixtures on these).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import create_engine, make_url, text

RawRecord: TypeAlias = ConsumerRecord[bytes, bytes]

# Short group timeouts so a rebalance (a consumer killed, a second one joining) takes seconds, not a minute.
FAST_GROUP = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def eventually(
    condition: Callable[[], object | Awaitable[object]],
    *,
    what: str = "condition",
    timeout_s: float = 20.0,
    interval_s: float = 0.05,
) -> None:
    """Poll ``condition`` (plain or async) until it is truthy; fail the test saying what did not happen in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = condition()
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s:g}s")
        await asyncio.sleep(interval_s)


# -- real Kafka ---------------------------------------------------------------------------------------------------


async def read_topic_records(
    bootstrap: str,
    topic: str,
    *,
    count: int,
    timeout_s: float = 30.0,
    where: Callable[[RawRecord], bool] | None = None,
    allow_fewer: bool = False,
) -> list[RawRecord]:
    """Records of ``topic``, read from the beginning without a consumer group until ``count`` of them match
    ``where`` (all when None), in (partition, offset) order. Fewer than ``count`` after ``timeout_s`` fail the
    test, unless ``allow_fewer`` (for a test that checks that no more arrived)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    matching: list[RawRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(matching) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                matching.extend(record for record in batch if where is None or where(record))
    finally:
        await consumer.stop()
    if not allow_fewer:
        assert len(matching) >= count, f"expected {count} records on {topic}, found {len(matching)} in {timeout_s:g}s"
    return sorted(matching, key=lambda record: (record.partition, record.offset))


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (a test's own), so the shared broker does not fill up."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


# -- real PostgreSQL ----------------------------------------------------------------------------------------------


@contextmanager
def fresh_postgres_schema(postgres_url: str, prefix: str = "test") -> Iterator[str]:
    """A URL of the shared database whose tables land in a schema of their own (``<prefix>_<random>``), dropped
    afterwards: the test user may not create databases, and a schema isolates concurrent test runs as well."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
