"""Helpers shared by the tests of every package: the real Kafka and PostgreSQL, a service's Alembic migrations,
free ports and waiting for a condition.

Import them as ``from tests.helpers import ...`` (the root conftest.py puts the repository root on sys.path
and builds its ``kafka_topics``, ``fresh_postgres_url`` and ``sqlite_or_postgres_url`` fixtures on these).
Benchmarks in bench/ import them too, with the repository root put on sys.path themselves.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from edgeloop_common.kafka_auth import PLAINTEXT, KafkaAuth
from sqlalchemy import Engine, create_engine, inspect, make_url, text

if TYPE_CHECKING:
    from edgeloop_common.migrations import AlembicMigrations

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
    auth: KafkaAuth = PLAINTEXT,
) -> list[RawRecord]:
    """Records of ``topic``, read from the beginning without a consumer group until ``count`` of them match
    ``where`` (all when None), in (partition, offset) order. Fewer than ``count`` after ``timeout_s`` fail the
    test, unless ``allow_fewer`` (for a test that checks that no more arrived)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        **auth.client_options(),  # a secured listener (docs/security.md)
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


async def delete_topics(bootstrap: str, prefix: str, *, auth: KafkaAuth = PLAINTEXT) -> None:
    """Delete every topic whose name starts with ``prefix`` (a test's own), so the shared broker does not fill up."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **auth.client_options())
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


# -- a service's Alembic migrations -------------------------------------------------------------------------------


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def assert_at_head(engine: Engine, migrations: AlembicMigrations, tables: Collection[str]) -> None:
    """The service's tables are there, at its head revision, recorded in its own version table, not in Alembic's
    default one (which other services' migrations in the same database would share)."""
    present = table_names(engine)
    assert present >= {*tables, migrations.version_table}
    assert "alembic_version" not in present
    assert migrations.current_revision(engine) == migrations.head_revision() is not None


def assert_at_base(engine: Engine, migrations: AlembicMigrations, tables: Collection[str]) -> None:
    """None of the service's tables is there, and no revision: downgraded to base, or never upgraded."""
    assert not table_names(engine) & set(tables)
    assert migrations.current_revision(engine) is None


def recorded_revisions(engine: Engine, migrations: AlembicMigrations) -> list[str]:
    """The rows of the service's version table: exactly one (the head), however many replicas upgraded."""
    with engine.connect() as connection:
        return list(connection.exec_driver_sql(f"SELECT version_num FROM {migrations.version_table}").scalars())


def start_replicas_together(
    database_url: str,
    start: Callable[[Engine], object],
    *,
    create_sql_engine: Callable[[str], Engine],
    replicas: int = 3,
) -> None:
    """Call ``start`` (what a service does with its database at start-up: upgrade the schema) from ``replicas``
    threads at once, each on an engine of its own, as replicas starting together do; fail with what any raised."""
    errors: list[BaseException] = []

    def start_replica() -> None:
        engine = create_sql_engine(database_url)
        try:
            start(engine)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start_replica) for _ in range(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
