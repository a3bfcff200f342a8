"""``create_app``: the trainer service wired together (trainings table, registry and ingest clients, engine, bus).

The lifespan builds the service, subscribes the handlers of :data:`~edgeloop_trainer.handlers.SUBSCRIPTIONS`
(TrainingRequested, SampleLabeled), then starts the bus if the app owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
from edgeloop_common.api_auth import install_api_auth, service_auth
from edgeloop_common.blobs import BlobReader
from edgeloop_common.bus.base import EventBus
from edgeloop_common.bus.factory import create_bus
from edgeloop_common.events import TrainingRequested
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from edgeloop_common.idempotency import SqlProcessedEventStore
from edgeloop_common.registry_client import RegistryClient
from edgeloop_common.subscriptions import subscribed
from fastapi import FastAPI
from sqlalchemy import Engine

from edgeloop_trainer import api
from edgeloop_trainer.adapters.runs import SqlRunStore, create_sql_engine
from edgeloop_trainer.adapters.samples_client import SamplesClient
from edgeloop_trainer.adapters.snapshots import LocalSnapshotStore
from edgeloop_trainer.handlers import SUBSCRIPTIONS, TrainerHandlers
from edgeloop_trainer.metrics import TrainerMetrics
from edgeloop_trainer.ports import Publisher, RegistryPort, SamplesPort, TrainingEngine
from edgeloop_trainer.service import SERVICE_NAME, TrainerConfig, TrainerService
from edgeloop_trainer.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TrainerRuntime:
    """What the lifespan started, for the routes and the readiness checks."""

    settings: Settings
    database: Engine
    runs: SqlRunStore
    service: TrainerService
    bus: EventBus
    subscriptions: ExitStack
    http_clients: list[httpx.AsyncClient] = field(default_factory=list)
    schedule: asyncio.Task[None] | None = None

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[bool]]]:
        return {"bus": self.bus.ready, "store": lambda: asyncio.to_thread(self.runs.reachable)}


def create_app(
    settings: Settings | None = None,
    *,
    bus: EventBus | None = None,
    registry: RegistryPort | None = None,
    samples: SamplesPort | None = None,
    engine: TrainingEngine | None = None,
) -> FastAPI:
    """The trainer app. With ``bus`` given (standalone, tests) the app uses it and does not start or stop it.

    ``registry``, ``samples`` and ``engine`` replace the HTTP clients and the
    Keras engine (tests; an in-process registry).
    """
    settings = settings or Settings()
    metrics = TrainerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await _start(settings, bus, registry, samples, engine, metrics)
        app.state.runtime = runtime
        app.state.service = runtime.service
        try:
            yield
        finally:
            app.state.service = None
            await _stop(runtime, owns_bus=bus is None)

    app = FastAPI(title="EdgeLoop trainer", version="1", lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(health_router(lambda: _checks(app), registry=metrics.registry))
    install_api_auth(app, settings.common, metrics.registry)
    instrument_http(app, metrics.registry)
    install_error_handlers(app, api.STATUS_FOR_ERROR)
    app.state.metrics = metrics
    return app


async def _constant(value: bool) -> bool:
    return value


def _checks(app: FastAPI) -> dict[str, Callable[[], Awaitable[bool]]]:
    runtime: TrainerRuntime | None = getattr(app.state, "runtime", None)
    if runtime is None:
        return {"started": lambda: _constant(False)}
    return runtime.readiness_checks()


def trainer_config(settings: Settings) -> TrainerConfig:
    return TrainerConfig(
        seed_data_dir=settings.seed_data_dir.resolve() if settings.seed_data_dir else None,
        eval_fraction=settings.eval_fraction,
        warm_start=settings.warm_start,
        retrain_every_labels=settings.retrain_every_labels,
        label_models=settings.model_names(),
        actor=settings.actor,
        max_attempts=settings.max_attempts,
    )


def keras_engine(settings: Settings) -> TrainingEngine:
    """TensorFlow is imported here, only when the real engine is used."""
    from edgeloop_trainer.adapters.keras_engine import EngineParameters, KerasTrainingEngine

    return KerasTrainingEngine(
        settings.resolved_model_base(),
        EngineParameters(
            recipe=settings.default_recipe(),
            epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            incremental_epochs=settings.incremental_epochs,
            incremental_learning_rate=settings.incremental_learning_rate,
            batch_size=settings.batch_size,
            seed=settings.seed,
            new_sample_weight=settings.new_sample_weight,
            feature_cache=settings.resolved_feature_cache(),
            model_recipes=settings.model_recipes(),
        ),
    )


def bus_publisher(bus: EventBus) -> Publisher:
    async def publish(event: TrainingRequested, event_id: str | None = None) -> str:
        published: str = await bus.publish(event, event_id=event_id)
        return published

    return publish


async def _start(
    settings: Settings,
    given_bus: EventBus | None,
    registry: RegistryPort | None,
    samples: SamplesPort | None,
    engine: TrainingEngine | None,
    metrics: TrainerMetrics,
) -> TrainerRuntime:
    database = create_sql_engine(settings.common.resolved_database_url(SERVICE_NAME))
    runs = await asyncio.to_thread(SqlRunStore, database)
    clients: list[httpx.AsyncClient] = []
    timeout = httpx.Timeout(settings.request_timeout_s, connect=5.0)
    auth = service_auth(settings.common)
    if registry is None:
        clients.append(httpx.AsyncClient(base_url=settings.registry_url, timeout=timeout, auth=auth))
        registry = RegistryClient(clients[-1])
    if samples is None and settings.ingest_url:
        clients.append(httpx.AsyncClient(base_url=settings.ingest_url, timeout=timeout, auth=auth))
        # s3 blobs straight from the shared store (any node); other URIs through ingest's image route.
        blobs = BlobReader(settings.common) if settings.common.blob_store == "s3" else None
        samples = SamplesClient(clients[-1], blobs=blobs)
    if engine is None:
        engine = await asyncio.to_thread(keras_engine, settings)
    snapshots = await asyncio.to_thread(LocalSnapshotStore, settings.resolved_data_dir())
    event_bus = given_bus
    if event_bus is None:
        processed = await asyncio.to_thread(SqlProcessedEventStore, database)
        event_bus = create_bus(settings.common, source=SERVICE_NAME, processed=processed)
    service = TrainerService(
        runs=runs,
        registry=registry,
        samples=samples,
        snapshots=snapshots,
        engine=engine,
        publish=bus_publisher(event_bus),
        config=trainer_config(settings),
        metrics=metrics,
    )
    subscriptions = ExitStack()
    subscriptions.enter_context(
        subscribed(event_bus, SUBSCRIPTIONS, TrainerHandlers(service, not_trained=settings.not_trained_models_set()))
    )
    if given_bus is None:
        await event_bus.start()
    await service.resume()
    runtime = TrainerRuntime(settings, database, runs, service, event_bus, subscriptions, clients)
    if settings.schedule_s > 0:
        runtime.schedule = asyncio.create_task(_schedule(service, settings.schedule_s), name="trainer:schedule")
    log.info(
        "trainer started: database %s, snapshots %s, models %s, registry %s, ingest %s, seed %s",
        database.url.render_as_string(hide_password=True),
        settings.resolved_data_dir(),
        settings.resolved_model_base(),
        settings.registry_url,
        settings.ingest_url or "off",
        settings.seed_data_dir or "none",
    )
    return runtime


async def _schedule(service: TrainerService, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await service.request_scheduled()
        except Exception:  # a failed tick is logged; the schedule goes on
            log.exception("scheduled training request failed")


async def _stop(runtime: TrainerRuntime, *, owns_bus: bool) -> None:
    if runtime.schedule is not None:
        runtime.schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runtime.schedule
    if owns_bus:
        await runtime.bus.stop()  # no new requests; those recorded stay queued for the next start
    runtime.subscriptions.close()
    await runtime.service.stop()
    for client in runtime.http_clients:
        await client.aclose()
    runtime.database.dispose()
