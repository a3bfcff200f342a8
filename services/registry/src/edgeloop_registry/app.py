"""``create_app``: the registry wired together (migrated database, service, outbox relay, HTTP API, health)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from edgeloop_common.api_auth import install_api_auth
from edgeloop_common.bus.base import EventBus
from edgeloop_common.bus.factory import create_bus
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from edgeloop_registry import api
from edgeloop_registry.adapters import migrations
from edgeloop_registry.adapters.db import SqlOutbox, SqlUnitOfWork, create_sql_engine, database_reachable
from edgeloop_registry.metrics import RegistryMetrics
from edgeloop_registry.relay import OutboxRelay, RelayConfig
from edgeloop_registry.service import RegistryService
from edgeloop_registry.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "registry"

DESCRIPTION = """Models, their versions (metrics, lineage, artifact, signature, status), aliases per model and per
edge node group with their history, the promotion policy and manual rollback. ModelRegistered and ModelPromoted
leave through a transactional outbox. See docs/registry.md."""

OPENAPI_TAGS = [
    {"name": "models", "description": "Models by name."},
    {"name": "versions", "description": "Versions of a model: metrics, lineage, artifact, status."},
    {"name": "aliases", "description": "Named pointers to versions (`production`, `candidate`, ...), per node group."},
    {"name": "promotion", "description": "Promotion to `production` under the policy, and rollback."},
    {"name": "health", "description": "Liveness, readiness (database and bus) and Prometheus metrics."},
]


@dataclass
class RegistryRuntime:
    """What the lifespan started, for the routes and the readiness checks."""

    engine: Engine
    service: RegistryService
    bus: EventBus
    relay: OutboxRelay

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[bool]]]:
        return {"database": self._database_reachable, "bus": self.bus.ready}

    async def _database_reachable(self) -> bool:
        return await asyncio.to_thread(database_reachable, self.engine)


def create_app(settings: Settings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    """The registry app. With ``bus`` given (standalone, tests) the app uses it and does not start or stop it."""
    settings = settings or Settings()
    metrics = RegistryMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await _start(settings, bus, metrics)
        app.state.runtime = runtime
        app.state.service = runtime.service
        try:
            yield
        finally:
            await _stop(runtime, owns_bus=bus is None)

    app = FastAPI(
        title="EdgeLoop registry", version="1", description=DESCRIPTION, openapi_tags=OPENAPI_TAGS, lifespan=lifespan
    )
    app.include_router(api.router)
    app.include_router(health_router(lambda: _checks(app), registry=metrics.registry))
    install_api_auth(app, settings.common, metrics.registry)
    instrument_http(app, metrics.registry)
    # Invalid input is not echoed back in a 422: an input holding NaN cannot even be rendered as JSON.
    install_error_handlers(app, api.STATUS_FOR_ERROR, echo_invalid_input=False)
    app.state.metrics = metrics
    return app


async def _constant(value: bool) -> bool:
    return value


def _checks(app: FastAPI) -> dict[str, Callable[[], Awaitable[bool]]]:
    runtime: RegistryRuntime | None = getattr(app.state, "runtime", None)
    if runtime is None:
        return {"started": lambda: _constant(False)}
    return runtime.readiness_checks()


async def _start(settings: Settings, given_bus: EventBus | None, metrics: RegistryMetrics) -> RegistryRuntime:
    engine = create_sql_engine(settings.resolved_database_url())
    if settings.migrate_on_start:
        await asyncio.to_thread(migrations.upgrade, engine)
    event_bus = given_bus or create_bus(settings.common, source=SERVICE_NAME)
    if given_bus is None:
        await event_bus.start()
    relay_config = RelayConfig(
        poll_interval_s=settings.outbox_poll_interval_s,
        batch_size=settings.outbox_batch_size,
        retry_max_s=settings.outbox_retry_max_s,
    )
    relay = OutboxRelay(SqlOutbox(engine), event_bus, relay_config, metrics)
    service = RegistryService(
        SqlUnitOfWork(engine), promotion_margin=settings.promotion_margin, outbox_written=relay.notify
    )
    await relay.start()
    log.info(
        "registry started: database %s (schema %s), promotion margin %.4f",
        engine.url.render_as_string(hide_password=True),
        await asyncio.to_thread(migrations.current_revision, engine),
        settings.promotion_margin,
    )
    return RegistryRuntime(engine, service, event_bus, relay)


async def _stop(runtime: RegistryRuntime, *, owns_bus: bool) -> None:
    await runtime.relay.stop()
    if owns_bus:
        await runtime.bus.stop()
    runtime.engine.dispose()
