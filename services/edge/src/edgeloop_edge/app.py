"""``create_app(settings)``: a site's edge agent as a FastAPI app (health, status, metrics).

The lifespan opens the edge store, the node group's model client, the cloud clients (joint inference, uplink, the
deployer's canary of the site) and the site broker's persistent MQTT session, answers what was acknowledged before
the last stop, and starts taking pictures. No Kafka and no bus: the edge talks to the cloud only through HTTPS
(docs/edge.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from edgeloop_common.api_auth import install_api_auth, service_auth
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from edgeloop_common.mining import create_miner
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttUnavailableError, ReceivedMessage
from edgeloop_common.serving import ModelClient, ModelRoute, TfServingRestClient, create_model_client
from edgeloop_common.settings import ConfigurationError
from edgeloop_common.telemetry.history import SiteHistory
from edgeloop_common.telemetry.scoring import NoThresholds, RegistryThresholds, ScoringConfig, TelemetryScorer
from edgeloop_common.topics import MQTT_IMAGE, MQTT_TELEMETRY, mqtt_topic
from fastapi import FastAPI

from edgeloop_edge import api
from edgeloop_edge.canary import CanaryWatcher
from edgeloop_edge.joint import CloudClassifier
from edgeloop_edge.metrics import EdgeMetrics
from edgeloop_edge.service import AgentConfig, EdgeAgent
from edgeloop_edge.settings import Settings
from edgeloop_edge.store import EdgeStore
from edgeloop_edge.telemetry import EdgeTelemetry, ScoredOutbox, ScoredTelemetryForwarder
from edgeloop_edge.uplink import UplinkForwarder

log = logging.getLogger(__name__)

RESULT_ACK_TIMEOUT_S = 5.0
SUBSCRIBE_RETRY_S = 1.0


class SiteNotConfiguredError(ConfigurationError):
    """The agent was started without a site."""


def create_app(settings: Settings | None = None, *, model_client: ModelClient | None = None) -> FastAPI:
    """The edge agent of ``settings.site``. ``model_client`` replaces the one the settings would build (tests)."""
    settings = settings or Settings()
    if not settings.site:
        raise SiteNotConfiguredError("the edge agent needs its site: --site S or EDGELOOP_EDGE_SITE")
    metrics = EdgeMetrics()
    miner = create_miner(
        settings.hard_example_miner,
        confidence_threshold=settings.hard_example_threshold,
        entropy_threshold=settings.hard_example_threshold,
        cross_entropy_threshold=settings.hard_example_threshold,
        ibt_threshold_img=settings.hard_example_threshold,
    )
    config = AgentConfig(
        site_id=settings.site,
        route=ModelRoute(settings.model_name),
        uplink_policy=settings.uplink_policy,
        uplink_sample_rate=settings.uplink_sample_rate,
        max_image_bytes=settings.max_image_bytes,
        inference_concurrency=settings.inference_concurrency,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            store = EdgeStore(
                settings.resolved_data_dir() / "edge.sqlite3",
                max_records=settings.uplink_max_records,
                max_bytes=settings.uplink_max_bytes,
            )
            stack.callback(store.close)
            metrics.uplink_queue_records.set_function(lambda: store.depth().records)  # read on each scrape
            metrics.uplink_queue_bytes.set_function(lambda: store.depth().image_bytes)
            client = model_client or create_model_client(
                settings.model_server_protocol,
                rest_url=settings.model_server_url,
                grpc_target=settings.model_server_grpc_target,
                timeout_s=settings.model_timeout_s,
                metadata_ttl_s=settings.metadata_refresh_s,
                auth=service_auth(settings.common),
            )
            stack.push_async_callback(client.close)
            cloud = None
            if settings.cloud_url:
                cloud = CloudClassifier(
                    settings.cloud_url,
                    budget_s=settings.joint_budget_ms / 1000.0,
                    link_retry_s=settings.link_retry_s,
                    auth=service_auth(settings.common),
                )
                stack.push_async_callback(cloud.close)
            canary = None
            if settings.deployer_url:
                canary = CanaryWatcher(
                    deployer_url=settings.deployer_url,
                    model_name=settings.model_name,
                    site_id=settings.site,
                    metrics=metrics,
                    poll_s=settings.canary_poll_s,
                    model_timeout_s=settings.model_timeout_s,
                    metadata_ttl_s=settings.metadata_refresh_s,
                    auth=service_auth(settings.common),
                )
                canary.start()  # in the background: the first answers go to the group's server until it knows
                stack.push_async_callback(canary.stop)
            forwarder = None
            if settings.ingest_url:
                forwarder = UplinkForwarder(
                    store,
                    ingest_url=settings.ingest_url,
                    site_id=settings.site,
                    metrics=metrics,
                    timeout_s=settings.uplink_timeout_s,
                    retry_max_s=settings.uplink_retry_max_s,
                    auth=service_auth(settings.common),
                )
                stack.push_async_callback(forwarder.stop)
            host, port = settings.resolved_mqtt()
            mqtt: AsyncMqttClient | None = None

            async def send_result(topic: str, payload: bytes) -> None:
                assert mqtt is not None
                try:
                    await asyncio.wait_for(mqtt.publish(topic, payload, qos=1), RESULT_ACK_TIMEOUT_S)
                except (TimeoutError, MqttUnavailableError) as exc:  # the answer is in the store and the uplink
                    log.warning("result on %s not acknowledged by the site broker: %s", topic, exc or "timeout")

            agent = EdgeAgent(
                config,
                store=store,
                model_client=client,
                miner=miner,
                send_result=send_result,
                metrics=metrics,
                cloud=cloud,
                canary=canary,
                on_answered=forwarder.wake if forwarder else None,
            )
            telemetry = None
            if settings.telemetry_scoring:
                telemetry = await _start_telemetry(settings, store, metrics, send_result, stack)
            mqtt = AsyncMqttClient(
                host,
                port,
                client_id=settings.resolved_client_id(),
                protocol=settings.mqtt_protocol,
                session_expiry_s=settings.mqtt_session_expiry_s,
                receive_maximum=settings.mqtt_receive_maximum,
                manual_ack=True,
                on_receive=agent.on_message if telemetry is None else _by_kind(agent.on_message, telemetry.on_message),
                read_burst=64,
                on_connection_change=lambda up: metrics.mqtt_connected.set(1 if up else 0),
                auth=settings.resolved_mqtt_auth(),
            )
            await agent.start()
            stack.push_async_callback(agent.stop)
            mqtt.connect_in_background()
            stack.push_async_callback(mqtt.close)
            pictures = mqtt_topic(MQTT_IMAGE, site=settings.site, device="+")
            subscription: str | list[str] = pictures
            if telemetry is not None:
                subscription = [pictures, mqtt_topic(MQTT_TELEMETRY, site=settings.site, device="+")]
            subscribing = asyncio.create_task(_subscribe(mqtt, subscription), name="edge-subscribe")
            stack.callback(subscribing.cancel)
            if forwarder is not None:
                forwarder.start()
            app.state.edge = api.EdgeState(
                settings=settings,
                agent=agent,
                store=store,
                forwarder=forwarder,
                cloud=cloud,
                canary=canary,
                mqtt=mqtt,
            )
            stack.callback(_forget_state, app)
            # Return subscribed when the broker is there, so what devices publish right after start is taken.
            try:
                await asyncio.wait_for(asyncio.shield(subscribing), 5.0)
            except TimeoutError:
                log.warning("site broker %s:%d not reachable yet; still trying", host, port)
            log.info(
                "edge agent of site %s up: broker %s:%d, model %s at %s, canaries from %s, cloud %s, uplink %s (%s)",
                settings.site,
                host,
                port,
                settings.model_name,
                settings.model_server_url,
                settings.deployer_url or "nowhere (off)",
                settings.cloud_url or "off",
                settings.ingest_url or "off",
                settings.uplink_policy,
            )
            yield

    app = FastAPI(title=f"EdgeLoop edge agent ({settings.site})", version="1", lifespan=lifespan)

    async def mqtt_ready() -> bool:
        state: api.EdgeState | None = getattr(app.state, "edge", None)
        return state is not None and state.mqtt.connected

    async def model_ready() -> bool:
        state: api.EdgeState | None = getattr(app.state, "edge", None)
        return state is not None and await state.agent.model_client.available(state.agent.config.route)

    app.include_router(api.router)
    app.include_router(
        health_router({"site broker": mqtt_ready, "model server": model_ready}, registry=metrics.registry)
    )
    install_api_auth(app, settings.common, metrics.registry)
    instrument_http(app, metrics.registry)
    install_error_handlers(app, api.STATUS_FOR_ERROR)
    app.state.metrics = metrics
    return app


def _by_kind(
    pictures: Callable[[ReceivedMessage], None], telemetry: Callable[[ReceivedMessage], None]
) -> Callable[[ReceivedMessage], None]:
    """One MQTT session, two intakes: telemetry topics to the telemetry, everything else to the pictures."""

    def receive(message: ReceivedMessage) -> None:
        (telemetry if message.topic.endswith("/telemetry") else pictures)(message)

    return receive


async def _start_telemetry(
    settings: Settings,
    store: EdgeStore,
    metrics: EdgeMetrics,
    send_alert: Callable[[str, bytes], Awaitable[None]],
    stack: AsyncExitStack,
) -> EdgeTelemetry:
    """The site history, the scorer on the node group's model server, the outbox and its forwarder."""
    history = SiteHistory(settings.resolved_history_file())
    stack.callback(history.close)
    outbox = ScoredOutbox(
        settings.resolved_data_dir() / "scored-telemetry.sqlite3", max_records=settings.telemetry_outbox_max_records
    )
    stack.callback(outbox.close)
    forwarder = None
    if settings.ingest_url:
        forwarder = ScoredTelemetryForwarder(
            outbox,
            ingest_url=settings.ingest_url,
            metrics=metrics,
            timeout_s=settings.uplink_timeout_s,
            retry_max_s=settings.uplink_retry_max_s,
            auth=service_auth(settings.common),
        )
        forwarder.start()
        stack.push_async_callback(forwarder.stop)
    telemetry = EdgeTelemetry(
        settings.site,
        history=history,
        store=store,
        outbox=outbox,
        metrics=metrics,
        send_alert=send_alert,
        on_queued=forwarder.wake if forwarder else None,
    )
    client = TfServingRestClient(
        settings.model_server_url,
        timeout_s=settings.model_timeout_s,
        metadata_ttl_s=settings.metadata_refresh_s,
        auth=service_auth(settings.common),
    )
    stack.push_async_callback(client.close)
    thresholds = (
        RegistryThresholds(settings.registry_url, auth=service_auth(settings.common))
        if settings.registry_url
        else NoThresholds()
    )
    stack.push_async_callback(thresholds.close)
    model = ModelRoute(settings.telemetry_model_name)
    scorer = TelemetryScorer(
        client,
        thresholds,
        ScoringConfig(
            served_by="edge",
            max_batch=settings.telemetry_max_batch,
            max_wait_s=settings.telemetry_max_wait_ms / 1000.0,
            max_pending=max(8192, settings.telemetry_max_batch),
            hysteresis=settings.telemetry_hysteresis,
            default_threshold=settings.telemetry_default_threshold,
            threshold_override=settings.telemetry_alert_threshold,
        ),
        route_for=lambda _site: model,
        emit=telemetry.emit,
    )
    telemetry.scorer = scorer
    scorer.start()
    stack.push_async_callback(scorer.close)
    telemetry.start()
    stack.push_async_callback(telemetry.stop)  # intake stops first, then the scorer drains, then the rest
    return telemetry


async def _subscribe(mqtt: AsyncMqttClient, subscription: str | list[str]) -> None:
    """The first subscription; the driver renews it on every reconnect (the broker's session keeps it too)."""
    while True:
        await mqtt.wait_connected(timeout_s=None)
        try:
            await mqtt.subscribe(subscription, qos=1)
            return
        except MqttUnavailableError as exc:
            log.error("subscription to %s failed (%s); retrying", subscription, exc)
            await asyncio.sleep(SUBSCRIBE_RETRY_S)


def _forget_state(app: FastAPI) -> None:
    app.state.edge = None
