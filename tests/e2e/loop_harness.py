"""The harness of the closed-loop test: an outside view of the events, and fresh PostgreSQL schemas.

The world around EdgeLoop (photos split into seed / before / after a change, a camera, a labeler) is played by
``edgeloop.demo_loop``, which the standalone demo uses too. Here:

* :class:`EventRecorder` — every record on the test's Kafka topics, read by a plain aiokafka consumer and
  decoded from the CloudEvents headers and JSON body alone (no EdgeLoop code), so the test sees the events
  as any other Kafka client would.
* :class:`FreshSchemas` — a PostgreSQL schema per service, created for one run and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from edgeloop_common import topics

# -- the events, as an outside Kafka client sees them -----------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One Kafka record decoded from its CloudEvents binary-mode headers and JSON body."""

    topic: str  # the contract topic (without the test's prefix)
    type: str  # ce_type
    id: str  # ce_id
    source: str  # ce_source
    time: datetime  # ce_time
    body: dict[str, Any]

    @property
    def name(self) -> str:
        """Short event name for messages: ``io.edgeloop.models.promoted.v1`` -> ``models.promoted``."""
        return self.type.removeprefix("io.edgeloop.").rsplit(".v", 1)[0]

    def detail(self) -> str:
        keys = ("version", "model_version", "phase", "desired_version", "actual_version", "test", "feature", "reason")
        return ", ".join(f"{key}={self.body[key]}" for key in keys if key in self.body)

    def describe(self) -> str:
        return f"{self.time.strftime('%H:%M:%S.%f')[:-3]} {self.name}({self.detail()})"


class EventRecorder:
    """Reads every contract topic under ``prefix`` from the beginning, with a plain aiokafka consumer."""

    def __init__(self, bootstrap_servers: str, prefix: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.prefix = prefix
        self.records: list[Recorded] = []
        self.undecodable: list[str] = []
        self._changed = asyncio.Condition()
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            *(self.prefix + topic for topic in topics.ALL_KAFKA_TOPICS),
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,  # no group: every partition, nothing committed
            auto_offset_reset="earliest",
            client_id=f"e2e-recorder-{uuid.uuid4().hex[:6]}",
            metadata_max_age_ms=1000,  # topics created after the start are picked up quickly
            fetch_max_wait_ms=100,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read(), name="e2e-event-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _read(self) -> None:
        async for record in self._consumer:
            decoded = self._decode(record)
            if decoded is None:
                continue
            async with self._changed:
                self.records.append(decoded)
                self._changed.notify_all()

    def _decode(self, record: Any) -> Recorded | None:
        headers = {name: value.decode() for name, value in record.headers or ()}
        try:
            return Recorded(
                topic=record.topic.removeprefix(self.prefix),
                type=headers["ce_type"],
                id=headers["ce_id"],
                source=headers["ce_source"],
                time=datetime.fromisoformat(headers["ce_time"]),
                body=json.loads(record.value),
            )
        except (KeyError, ValueError) as exc:
            self.undecodable.append(f"{record.topic}@{record.offset}: {exc}")
            return None

    def events(self, name: str | None = None, where: Callable[[dict[str, Any]], bool] | None = None) -> list[Recorded]:
        """Recorded events in the order they happened (CloudEvents time), optionally one kind and a filter."""
        chosen = [r for r in self.records if (name is None or r.name == name) and (where is None or where(r.body))]
        return sorted(chosen, key=lambda r: r.time)

    async def wait_for(
        self, name: str, where: Callable[[dict[str, Any]], bool] | None = None, *, timeout_s: float
    ) -> Recorded:
        """The first event ``name`` matching ``where``, waiting for it up to ``timeout_s``."""

        def found() -> Recorded | None:
            matching = self.events(name, where)
            return matching[0] if matching else None

        async with self._changed:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait_for(lambda: found() is not None)
            except TimeoutError:
                raise AssertionError(
                    f"no {name} event after {timeout_s:.0f} s; events so far:\n{self.timeline()}"
                ) from None
        result = found()
        assert result is not None
        return result

    def timeline(self, *, site: str | None = None, skip: Iterable[str] = ("images.received",)) -> str:
        """The recorded events, one line each (runs of alike events folded into one), for logs and failures."""
        skipped = set(skip)
        lines: list[tuple[Recorded, int]] = []
        for record in self.events():
            if record.name in skipped or (site is not None and record.body.get("site_id", site) != site):
                continue
            if lines and (lines[-1][0].name, lines[-1][0].detail()) == (record.name, record.detail()):
                lines[-1] = (lines[-1][0], lines[-1][1] + 1)
            else:
                lines.append((record, 1))
        return "\n".join(f"{r.describe()}{f' x{n}' if n > 1 else ''}" for r, n in lines) or "(none)"


# -- PostgreSQL ------------------------------------------------------------------------------------------------


class FreshSchemas:
    """One fresh PostgreSQL schema per service, for one run, dropped afterwards with everything in it.

    The ``edgeloop`` role may not create databases; a schema per service isolates as well: each service's URL
    sets its ``search_path`` to its own schema, so its tables (and migrations) land there.
    """

    def __init__(self, server_url: str, services: Iterable[str]) -> None:
        self.server_url = server_url
        self.run_id = uuid.uuid4().hex[:10]
        self.names = {service: f"e2e_{self.run_id}_{service.replace('-', '_')}" for service in services}

    def url(self, service: str) -> str:
        separator = "&" if "?" in self.server_url else "?"
        return f"{self.server_url}{separator}options={quote(f'-csearch_path={self.names[service]}')}"

    @contextlib.contextmanager
    def created(self) -> Iterator[FreshSchemas]:
        import psycopg

        admin_url = self.server_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin_url, autocommit=True) as connection:
            for name in self.names.values():
                connection.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield self
        finally:
            with psycopg.connect(admin_url, autocommit=True) as connection:
                for name in self.names.values():
                    connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
