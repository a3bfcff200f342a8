"""Helpers of the registry's tests: a fresh PostgreSQL schema, a bus that can be down, version bodies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from edgeloop_common.bus.base import BusUnavailableError
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import Event
from sqlalchemy import create_engine, text


@pytest.fixture(scope="module")
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A database URL whose tables land in a schema of their own, created for this test module and dropped after
    (the test user may not create databases; a schema isolates as well)."""
    schema = f"registry_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class SwitchableBus(InProcessBus):
    """An in-process bus whose broker can be 'down': publish then raises BusUnavailableError, as Kafka's does."""

    def __init__(self) -> None:
        super().__init__(source="registry")
        self.down = False
        self.refused = 0

    async def publish(self, event: Event, **kwargs: Any) -> str:
        if self.down:
            self.refused += 1
            raise BusUnavailableError("broker down (test)")
        return await super().publish(event, **kwargs)

    async def ready(self) -> bool:
        return not self.down and await super().ready()


def version_body(
    accuracy: float | None,
    *,
    evaluation_set_id: str | None = "evalset-a",
    baseline: dict[str, Any] | None = None,
    version: int | None = None,
    model: str = "classifier",
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "per_class": {"cat": {"precision": 0.7, "recall": 0.8, "f1": 0.75, "support": 41}},
        "train_counts": {"cat": 160, "dog": 170},
        "eval_counts": {"cat": 41, "dog": 41},
    }
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    if evaluation_set_id is not None:
        metrics["evaluation_set_id"] = evaluation_set_id
    if baseline is not None:
        metrics["baseline"] = baseline
    return {
        "version": version,
        "artifact_uri": f"file:///models/{model}/{version or 'next'}",
        "signature": {"inputs": {"image_bytes": "DT_STRING"}, "outputs": {"scores": "DT_FLOAT"}},
        "metrics": metrics,
        "reference_stats": {"n": 2, "features": {"confidence": [0.9, 0.8]}, "class_frequencies": {"cat": 0.5}},
        "lineage": {
            "dataset_snapshot_id": "snap-0123456789abcdef",
            "parent_version": None,
            "parameters": {"epochs": 1},
        },
        "train_started_at": "2026-01-02T03:04:05Z",
        "train_duration_s": 31.5,
    }


async def wait_for(condition: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test saying what did not happen."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


# -- real Kafka ---------------------------------------------------------------------------------------------------


async def read_records(bootstrap: str, topic: str, *, count: int, timeout_s: float = 30.0) -> list[Any]:
    """The first ``count`` records of ``topic``, read from the beginning by a plain aiokafka consumer (no group)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(records) < count and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda record: (record.partition, record.offset))


async def delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()
