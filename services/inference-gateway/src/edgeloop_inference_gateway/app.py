"""``create_app(settings, *, bus=None)``: the inference gateway as a FastAPI app.

The lifespan builds the adapters and the service, subscribes the handlers of
:data:`~edgeloop_inference_gateway.handlers.SUBSCRIPTIONS` (ImageReceived, and
DeploymentUpdated for the routes), then starts the bus if the app owns it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import cast

from edgeloop_common.api_auth import install_api_auth, service_auth
from edgeloop_common.blobs import BlobReader
from edgeloop_common.bus import EventBus
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from edgeloop_common.mining import HardExampleMiner, create_miner
from edgeloop_common.serving import (
    ModelClient,
    ModelRoute,
    SignatureFallback,
    TfServingRestClient,
    create_model_client,
)
from edgeloop_common.subscriptions import subscribed, with_consumer_group_setting
from edgeloop_common.telemetry.scoring import (
    NoThresholds,
    RegistryThresholds,
    ScoringConfig,
    TelemetryScorer,
    TensorPredictor,
)
from fastapi import FastAPI

from edgeloop_inference_gateway import api
from edgeloop_inference_gateway.adapters.blob_fetch import UriBlobFetcher
from edgeloop_inference_gateway.handlers import SUBSCRIPTIONS, GatewayHandlers
from edgeloop_inference_gateway.metrics import GatewayMetrics
from edgeloop_inference_gateway.ports import BlobFetcher, ResultPublisher
from edgeloop_inference_gateway.routing import ModelRouter, parse_site_routes
from edgeloop_inference_gateway.service import BatchingConfig, InferenceService
from edgeloop_inference_gateway.settings import Settings
from edgeloop_inference_gateway.telemetry import GatewayTelemetry, TelemetryPublisher, parse_sites

log = logging.getLogger(__name__)

SERVICE_NAME = "inference-gateway"


def router_from_settings(settings: Settings) -> ModelRouter:
    return ModelRouter(
        ModelRoute.of(settings.model_name, settings.model_version), parse_site_routes(settings.site_routes)
    )


def miner_from_settings(settings: Settings) -> HardExampleMiner:
    return create_miner(
        settings.hard_example_miner,
        confidence_threshold=settings.hard_example_confidence_threshold,
        entropy_threshold=settings.hard_example_entropy_threshold,
        cross_entropy_threshold=settings.hard_example_cross_entropy_threshold,
        ibt_threshold_img=settings.hard_example_ibt_threshold_img,
        ibt_threshold_box=settings.hard_example_ibt_threshold_box,
    )


def model_client_from_settings(settings: Settings) -> ModelClient:
    """The model client the settings name: REST, or gRPC (which imports TensorFlow)."""
    return create_model_client(
        settings.model_server_protocol,
        rest_url=settings.model_server_rest_url,
        grpc_target=settings.model_server_grpc_target,
        timeout_s=settings.request_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        retries=settings.model_retries,
        backoff_s=settings.retry_backoff_s,
        metadata_ttl_s=settings.metadata_refresh_s,
        fallback=signature_fallback(settings),
        auth=service_auth(settings.common),
    )


def signature_fallback(settings: Settings) -> SignatureFallback:
    return SignatureFallback(
        signature_name=settings.signature_name,
        input_name=settings.input_name,
        scores_output=settings.scores_output,
        classes_output=settings.classes_output,
    )


def rest_client_from_settings(settings: Settings, fallback: SignatureFallback | None = None) -> TfServingRestClient:
    """The REST client of the TF Serving passthrough (which always speaks REST)."""
    return TfServingRestClient(
        settings.model_server_rest_url,
        timeout_s=settings.request_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        retries=settings.model_retries,
        backoff_s=settings.retry_backoff_s,
        metadata_ttl_s=settings.metadata_refresh_s,
        fallback=fallback,
        auth=service_auth(settings.common),
    )


def create_app(
    settings: Settings | None = None,
    *,
    bus: EventBus | None = None,
    model_client: ModelClient | None = None,
    blob_fetcher: BlobFetcher | None = None,
    results: ResultPublisher | None = None,
) -> FastAPI:
    """The gateway. ``bus``: use this bus and leave starting/stopping it to the caller (standalone mode).

    ``model_client``, ``blob_fetcher`` and ``results`` replace the adapters the settings would build (tests).
    """
    settings = settings or Settings()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per model call drowns the log
    router = router_from_settings(settings)  # a bad route fails here, at start-up, with the reason
    miner = miner_from_settings(settings)
    metrics = GatewayMetrics()
    owns_bus = bus is None
    if bus is None:
        from edgeloop_common.bus.factory import create_bus

        # No processed-event store of its own: a redelivered image is classified again, and the
        # InferenceCompleted it yields has the same event id (handlers.inference_event_id), so consumers skip it.
        bus = create_bus(settings.common, source=SERVICE_NAME)
    event_bus: EventBus = bus

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            passthrough = rest_client_from_settings(settings)
            stack.push_async_callback(passthrough.close)
            client = model_client or model_client_from_settings(settings)
            if model_client is None:
                stack.push_async_callback(client.close)
            fetcher = blob_fetcher
            if fetcher is None:
                uri_fetcher = UriBlobFetcher(
                    max_bytes=settings.max_image_bytes,
                    timeout_s=settings.blob_fetch_timeout_s,
                    reader=BlobReader(settings.common),
                )
                stack.push_async_callback(uri_fetcher.close)
                fetcher = uri_fetcher
            publisher = results
            if publisher is None and settings.mqtt_results:
                publisher = await _start_mqtt(settings, metrics, stack)
            service = InferenceService(
                model_client=client,
                router=router,
                blob_fetcher=fetcher,
                batching=BatchingConfig(
                    max_batch_size=settings.max_batch_size,
                    max_wait_ms=settings.max_wait_ms,
                    max_concurrent_batches=settings.max_concurrent_batches,
                ),
                metrics=metrics,
                miner=miner,
                max_image_bytes=settings.max_image_bytes,
            )
            stack.push_async_callback(service.close)
            app.state.gateway = api.GatewayState(
                service=service, passthrough=passthrough, routes_caught_up=event_bus.caught_up
            )
            app.state.results = publisher
            # The failure model's windows go over gRPC when the settings say gRPC (packed float tensors, no JSON
            # to encode: cheaper per reading), else over REST.
            predictor: TensorPredictor = passthrough
            if settings.model_server_protocol == "grpc" and hasattr(client, "predict_tensors"):
                predictor = cast(TensorPredictor, client)
            telemetry = (
                await _start_telemetry(settings, event_bus, predictor, publisher, metrics, stack)
                if settings.telemetry_scoring
                else None
            )
            app.state.telemetry = telemetry
            stack.enter_context(
                subscribed(
                    event_bus,
                    with_consumer_group_setting(SUBSCRIPTIONS, settings),
                    GatewayHandlers(service, event_bus, publisher, telemetry),
                )
            )
            if owns_bus:
                await event_bus.start()
                stack.push_async_callback(event_bus.stop)
            log.info(
                "inference gateway up: %s model server, default route %s, batching %d/%.1fms",
                settings.model_server_protocol,
                router.default,
                settings.max_batch_size,
                settings.max_wait_ms,
            )
            yield

    app = FastAPI(title="EdgeLoop inference gateway", lifespan=lifespan)

    async def bus_ready() -> bool:
        return await event_bus.ready()

    async def models_ready() -> bool:
        state: api.GatewayState | None = getattr(app.state, "gateway", None)
        return state is not None and await state.service.models_available()

    async def mqtt_ready() -> bool:
        publisher: ResultPublisher | None = getattr(app.state, "results", None)
        return publisher is not None and await publisher.ready()

    async def routes_ready() -> bool:
        return event_bus.caught_up()  # not before the deployments from before the start are replayed

    checks = {"bus": bus_ready, "model_server": models_ready, "routes": routes_ready}
    if settings.mqtt_results or results is not None:
        checks["mqtt"] = mqtt_ready
    app.include_router(health_router(checks, registry=metrics.registry))
    install_api_auth(app, settings.common, metrics.registry, access=api.ACCESS)
    instrument_http(app, metrics.registry)
    app.include_router(api.classify_router)
    app.include_router(api.tf_serving_router)
    app.include_router(api.routes_router)
    install_error_handlers(app, api.STATUS_FOR_ERROR)
    app.state.metrics = metrics
    app.state.bus = event_bus
    return app


async def _start_telemetry(
    settings: Settings,
    bus: EventBus,
    client: TensorPredictor,
    publisher: ResultPublisher | None,
    metrics: GatewayMetrics,
    stack: AsyncExitStack,
) -> GatewayTelemetry:
    """The failure-model scorer (docs/telemetry.md, "Scoring"): its batching tasks stop before the bus does."""
    thresholds = RegistryThresholds(settings.registry_url) if settings.registry_url else NoThresholds()
    stack.push_async_callback(thresholds.close)
    router = ModelRouter(ModelRoute(settings.telemetry_model_name))
    scorer = TelemetryScorer(
        client,
        thresholds,
        ScoringConfig(
            served_by="cloud",
            max_batch=settings.telemetry_max_batch,
            max_wait_s=settings.telemetry_max_wait_ms / 1000.0,
            max_pending=max(settings.telemetry_max_pending, settings.telemetry_max_batch),
            hysteresis=settings.telemetry_hysteresis,
            default_threshold=settings.telemetry_default_threshold,
            threshold_override=settings.telemetry_alert_threshold,
        ),
        route_for=router.route_for,
        emit=TelemetryPublisher(bus, metrics, getattr(publisher, "send_alert", None)),
        on_latency=metrics.telemetry_scoring_duration.observe,
    )
    scorer.start()
    stack.push_async_callback(scorer.close)
    return GatewayTelemetry(scorer, router, metrics, parse_sites(settings.telemetry_edge_sites))


async def _start_mqtt(settings: Settings, metrics: GatewayMetrics, stack: AsyncExitStack) -> ResultPublisher:
    from edgeloop_inference_gateway.adapters.mqtt_results import MqttResultPublisher

    publisher = MqttResultPublisher(
        settings.common.mqtt_host,
        settings.common.mqtt_port,
        qos=settings.mqtt_qos,
        ack_timeout_s=settings.mqtt_ack_timeout_s,
        metrics=metrics,
        auth=settings.common.mqtt_auth(),
        protocol=settings.mqtt_protocol,
    )
    await publisher.start()
    stack.push_async_callback(publisher.close)
    return publisher
