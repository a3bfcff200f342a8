"""``create_app``: the ingest service wired together (bridge, stores, MQTT subscriber, HTTP API, the uplink from
edge agents).

Ingest also consumes InferenceCompleted to keep each sample's prediction: the lifespan builds the store,
subscribes the handlers of :data:`~edgeloop_ingest.handlers.SUBSCRIPTIONS`, then starts the bus if the app
owns it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from edgeloop_common.api_auth import install_api_auth
from edgeloop_common.blobs import describe_blob_store, open_blob_store
from edgeloop_common.bus.base import EventBus
from edgeloop_common.bus.factory import create_bus
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from edgeloop_common.subscriptions import subscribed
from fastapi import FastAPI
from sqlalchemy import Engine

from edgeloop_ingest import api
from edgeloop_ingest.adapters.dead_letters import SqlDeadLetterRepository
from edgeloop_ingest.adapters.disk_buffer import DiskBuffer
from edgeloop_ingest.adapters.mqtt import AsyncioMqttSubscriber, MqttConfig
from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine
from edgeloop_ingest.adapters.uplink_records import SqlUplinkArrivalRepository
from edgeloop_ingest.bridge import Bridge, BridgeConfig
from edgeloop_ingest.handlers import SUBSCRIPTIONS, IngestHandlers, mqtt_message_handler
from edgeloop_ingest.labeling import LabelingService
from edgeloop_ingest.metrics import IngestMetrics
from edgeloop_ingest.service import SERVICE_NAME, IngestService
from edgeloop_ingest.settings import Settings
from edgeloop_ingest.uplink import UplinkService
from edgeloop_ingest.validation import ImageLimits

log = logging.getLogger(__name__)


@dataclass
class IngestRuntime:
    """What the lifespan started, for the routes and the readiness checks."""

    settings: Settings
    engine: Engine
    service: IngestService
    labeling: LabelingService
    uplink: UplinkService
    dead_letters: SqlDeadLetterRepository
    bus: EventBus
    subscriptions: ExitStack
    buffer: DiskBuffer
    bridge: Bridge
    subscriber: AsyncioMqttSubscriber | None

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[bool]]]:
        checks: dict[str, Callable[[], Awaitable[bool]]] = {"bus": self.bus.ready, "store": self._store_writable}
        if self.subscriber is not None:
            subscriber = self.subscriber
            checks["mqtt"] = lambda: _constant(subscriber.connected)
        return checks

    async def _store_writable(self) -> bool:
        def check() -> bool:
            repository = self.service.samples
            assert isinstance(repository, SqlSampleRepository)
            return self.service.blobs.writable() and repository.reachable() and self.buffer.writable()

        return await asyncio.to_thread(check)


async def _constant(value: bool) -> bool:
    return value


def build_service(settings: Settings, engine: Engine) -> IngestService:
    return IngestService(
        blobs=open_blob_store(settings.common, folder=settings.resolved_blob_dir()),
        samples=SqlSampleRepository(engine),
        limits=ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
        max_telemetry_bytes=settings.max_telemetry_bytes,
        dead_letter_max_payload_bytes=settings.dead_letter_max_payload_bytes,
        redelivery_window=timedelta(seconds=settings.redelivery_window_s),
    )


def bridge_config(settings: Settings) -> BridgeConfig:
    return BridgeConfig(
        batch_max_messages=settings.batch_max_messages,
        batches_in_flight=settings.batches_in_flight,
        worker_threads=settings.worker_threads,
        drain_batch_messages=settings.drain_batch_messages,
        drain_retry_s=settings.drain_retry_s,
    )


def mqtt_config(settings: Settings) -> MqttConfig:
    return MqttConfig(
        host=settings.common.mqtt_host,
        port=settings.common.mqtt_port,
        client_id=settings.mqtt_client_id,
        subscriptions=settings.mqtt_subscriptions(),
        receive_maximum=settings.mqtt_receive_maximum,
        session_expiry_s=settings.mqtt_session_expiry_s,
        keepalive_s=settings.mqtt_keepalive_s,
        protocol=settings.mqtt_protocol,
        auth=settings.common.mqtt_auth(),
    )


def create_app(settings: Settings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    """The ingest app. With ``bus`` given (standalone, tests) the app uses it and does not start or stop it."""
    settings = settings or Settings()
    metrics = IngestMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await _start(settings, bus, metrics)
        app.state.runtime = runtime
        app.state.service = runtime.service
        app.state.labeling = runtime.labeling
        app.state.bridge = runtime.bridge
        app.state.uplink = runtime.uplink
        app.state.dead_letters = runtime.dead_letters
        try:
            yield
        finally:
            app.state.bridge = None
            app.state.uplink = None
            await _stop(runtime, owns_bus=bus is None)

    app = FastAPI(title="EdgeLoop ingest", version="1", lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(api.labels_router)
    app.include_router(api.queue_router)
    app.include_router(api.uplink_router)
    app.include_router(api.devices_router)
    app.include_router(api.stats_router)
    app.include_router(api.dead_letters_router)
    app.include_router(health_router(lambda: _checks(app), registry=metrics.registry))
    install_api_auth(app, settings.common, metrics.registry, access=api.ACCESS)
    instrument_http(app, metrics.registry)
    install_error_handlers(app, api.STATUS_FOR_ERROR)
    app.state.metrics = metrics
    return app


def _checks(app: FastAPI) -> dict[str, Callable[[], Awaitable[bool]]]:
    runtime: IngestRuntime | None = getattr(app.state, "runtime", None)
    if runtime is None:
        return {"started": lambda: _constant(False)}
    return runtime.readiness_checks()


async def _start(settings: Settings, given_bus: EventBus | None, metrics: IngestMetrics) -> IngestRuntime:
    engine = create_sql_engine(settings.common.resolved_database_url(SERVICE_NAME))
    service = await asyncio.to_thread(build_service, settings, engine)
    assert isinstance(service.samples, SqlSampleRepository)
    labeling = LabelingService(service.samples)
    uplink = UplinkService(service, SqlUplinkArrivalRepository(engine))  # the schema: upgraded just above
    event_bus = given_bus or create_bus(settings.common, source=SERVICE_NAME)
    subscriptions = ExitStack()
    dead_letters = SqlDeadLetterRepository(engine)
    handlers = IngestHandlers(labeling, dead_letters, metrics)
    subscriptions.enter_context(subscribed(event_bus, SUBSCRIPTIONS, handlers))
    if given_bus is None:
        await event_bus.start()
    buffer = await asyncio.to_thread(DiskBuffer, settings.resolved_buffer_path())
    bridge = Bridge(service, event_bus, buffer, bridge_config(settings), metrics)
    await bridge.start()
    subscriber = None
    if settings.mqtt_enabled:
        subscriber = AsyncioMqttSubscriber(mqtt_config(settings), mqtt_message_handler(bridge))
        await subscriber.start()
    log.info(
        "ingest started: database %s, blobs %s, buffer %s (%d waiting), MQTT %s",
        engine.url.render_as_string(hide_password=True),
        describe_blob_store(settings.common, folder=settings.resolved_blob_dir()),
        buffer.path,
        bridge.buffered_count,
        f"{settings.common.mqtt_host}:{settings.common.mqtt_port}" if subscriber else "off",
    )
    return IngestRuntime(
        settings, engine, service, labeling, uplink, dead_letters, event_bus, subscriptions, buffer, bridge, subscriber
    )


async def _stop(runtime: IngestRuntime, *, owns_bus: bool) -> None:
    if runtime.subscriber is not None:
        runtime.subscriber.pause()  # no new messages; those taken are acknowledged once durable
    await runtime.bridge.stop()
    if runtime.subscriber is not None:
        await runtime.subscriber.stop()  # what is still unacknowledged stays with the broker's session
    if owns_bus:
        await runtime.bus.stop()
    runtime.subscriptions.close()
    runtime.buffer.close()
    runtime.engine.dispose()
