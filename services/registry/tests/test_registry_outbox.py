"""The transactional outbox: a change and its event commit together or not at all; events wait while the bus is
down and leave in order once it returns; a re-relay after a crash is a duplicate that consumers skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop_common.bus.base import EventContext
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import Event, ModelPromoted, ModelRegistered
from edgeloop_common.settings import CommonSettings
from edgeloop_registry.adapters.db import (
    AliasMoveRow,
    AliasRow,
    OutboxRow,
    SqlOutbox,
    SqlRegistryTransaction,
    SqlUnitOfWork,
    VersionRow,
    create_sql_engine,
)
from edgeloop_registry.adapters.migrations import MIGRATIONS
from edgeloop_registry.app import create_app
from edgeloop_registry.relay import OutboxRelay
from edgeloop_registry.service import NewVersion, RegistryService
from edgeloop_registry.settings import Settings
from registry_testing import SwitchableBus, version_body, wait_for
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_sql_engine(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    MIGRATIONS.upgrade(engine)
    yield engine
    engine.dispose()


def count(engine: Engine, row_cls: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(row_cls)).scalar_one())


def outbox_rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(OutboxRow.event_id, OutboxRow.published_at).order_by(OutboxRow.id)))


class CrashAfterOutboxInsert(Exception):
    pass


def crash_after_outbox_insert(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the process fails right after an event row was inserted, before the transaction commits."""
    original = SqlRegistryTransaction.add_outbox

    def add_then_crash(self: SqlRegistryTransaction, event: Event) -> str:
        original(self, event)
        raise CrashAfterOutboxInsert("crashed after the outbox insert")

    monkeypatch.setattr(SqlRegistryTransaction, "add_outbox", add_then_crash)


def test_a_failed_registration_leaves_neither_the_version_nor_its_event(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = RegistryService(SqlUnitOfWork(engine))
    crash_after_outbox_insert(monkeypatch)
    with pytest.raises(CrashAfterOutboxInsert):
        service.register_version("classifier", NewVersion(artifact_uri="file:///models/classifier/1"))
    assert count(engine, VersionRow) == 0
    assert count(engine, OutboxRow) == 0


def test_a_failed_promotion_leaves_neither_the_alias_move_nor_its_event(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = RegistryService(SqlUnitOfWork(engine))
    service.register_version("classifier", NewVersion(artifact_uri="file:///models/classifier/1"))
    assert count(engine, OutboxRow) == 1  # ModelRegistered

    crash_after_outbox_insert(monkeypatch)
    with pytest.raises(CrashAfterOutboxInsert):
        service.promote("classifier", 1, node_group=None, reason="first", actor="test")
    assert count(engine, AliasRow) == 0
    assert count(engine, AliasMoveRow) == 0
    assert count(engine, OutboxRow) == 1
    assert service.get_model("classifier").production_version is None


async def test_a_relay_after_a_crash_republishes_with_the_same_event_id_and_consumers_skip_it(engine: Engine) -> None:
    bus = InProcessBus(source="registry")
    handled: list[str] = []

    async def deployer(event: ModelRegistered, context: EventContext) -> None:
        handled.append(context.event_id)

    bus.subscribe(ModelRegistered, deployer, group="deployer")
    await bus.start()
    relay = OutboxRelay(SqlOutbox(engine), bus)
    service = RegistryService(SqlUnitOfWork(engine))
    service.register_version("classifier", NewVersion(artifact_uri="file:///models/classifier/1"))

    assert await relay.relay_pending() == 1
    with engine.begin() as connection:  # the crash: published, but the mark never committed
        connection.execute(update(OutboxRow).values(published_at=None))
    assert await relay.relay_pending() == 1
    await bus.drain()
    await bus.stop()

    [(event_id, published_at)] = outbox_rows(engine)
    assert published_at is not None
    assert [context.event_id for _, context in bus.published] == [event_id, event_id]
    assert handled == [event_id]


async def test_changes_made_while_the_bus_is_down_are_published_once_it_returns(tmp_path: Path) -> None:
    bus = SwitchableBus()
    await bus.start()
    bus.down = True
    settings = Settings(
        outbox_poll_interval_s=0.05,
        outbox_retry_max_s=0.2,
        common=CommonSettings(mode="standalone", data_dir=tmp_path),
    )
    app = create_app(settings, bus=bus)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry") as client,
    ):
        assert (await client.post("/v1/models/classifier/versions", json=version_body(0.7))).status_code == 201
        promoted = await client.post(
            "/v1/models/classifier/promotions", json={"version": 1, "reason": "first", "actor": "test"}
        )
        assert promoted.status_code == 200 and promoted.json()["promoted"]
        await wait_for(lambda: bus.refused >= 2, what="the relay trying while the bus is down")

        readiness = await client.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["checks"]["bus"] == "not ready"
        assert bus.published == []
        engine = app.state.runtime.engine
        assert [published_at for _, published_at in outbox_rows(engine)] == [None, None]

        bus.down = False
        await wait_for(lambda: len(bus.published) == 2, what="the waiting events after the bus returned")
        await wait_for(lambda: all(at is not None for _, at in outbox_rows(engine)), what="rows marked published")
        assert (await client.get("/readyz")).status_code == 200

    assert [type(event) for event, _ in bus.published] == [ModelRegistered, ModelPromoted]
    assert [context.event_id for _, context in bus.published] == [event_id for event_id, _ in outbox_rows(engine)]
    await bus.stop()
