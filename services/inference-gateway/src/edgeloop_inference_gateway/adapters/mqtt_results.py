"""Results to devices on ``dt/edgeloop/{site}/{device}/result`` (QoS 1), over one MQTT connection.

The connection is driven by the asyncio loop (:mod:`edgeloop_common.mqtt_asyncio`),
not by a second thread, which is what keeps publishing fast (docs/architecture.md).

The event's durable record is the InferenceCompleted event, published before
the device result. If the broker does not acknowledge the result within
``ack_timeout_s`` the handler does not fail: paho keeps the QoS 1 message and sends it after the reconnect, and the
``edgeloop_device_results_total{outcome="unacknowledged"}`` counter shows it.
"""

from __future__ import annotations

import asyncio
import logging

from edgeloop_common import otel, topics
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttProtocol, MqttUnavailableError
from edgeloop_common.mqtt_auth import MqttAuth

from edgeloop_inference_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class ResultDeliveryError(Exception):
    """The MQTT client refused the result (transient: the event is retried)."""


class MqttResultPublisher:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        qos: int = 1,
        ack_timeout_s: float = 5.0,
        metrics: GatewayMetrics | None = None,
        client_id: str | None = None,
        auth: MqttAuth | None = None,
        protocol: MqttProtocol = "5",
    ) -> None:
        self.qos = qos
        self.ack_timeout_s = ack_timeout_s
        self.metrics = metrics or GatewayMetrics()
        self.client = AsyncMqttClient(host, port, client_id=client_id, auth=auth, protocol=protocol)

    async def start(self, connect_timeout_s: float = 10.0) -> None:
        """Connect; if the broker is not there yet, keep trying in the background (``/readyz`` shows it)."""
        try:
            await self.client.connect(timeout_s=connect_timeout_s)
        except MqttUnavailableError as exc:
            log.warning("%s; results to devices are queued until it is reachable", exc)
            self.client.connect_in_background()

    async def close(self) -> None:
        await self.client.close()

    async def ready(self) -> bool:
        return self.client.connected

    async def send(self, site_id: str, device_id: str, payload: bytes, *, traceparent: str | None = None) -> None:
        topic = topics.mqtt_topic(topics.MQTT_RESULT, site=site_id, device=device_id)
        # Under MQTT 5 the device gets the trace its picture started back with the result (docs/observability.md).
        properties = {otel.TRACEPARENT: traceparent} if traceparent else None
        acked = self.client.publish(topic, payload, qos=self.qos, user_properties=properties)
        acked.add_done_callback(_consume_error)
        if not self.client.connected and not acked.done():
            # Queued until the reconnect: waiting for it here would hold up every event behind this one.
            self.metrics.device_results.labels(outcome="unacknowledged").inc()
            return
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                await asyncio.shield(acked)
        except TimeoutError:
            self.metrics.device_results.labels(outcome="unacknowledged").inc()
            log.warning(
                "result for %s/%s not acknowledged within %.1fs; queued for resend",
                site_id,
                device_id,
                self.ack_timeout_s,
            )
            return
        except MqttUnavailableError as exc:
            self.metrics.device_results.labels(outcome="failed").inc()
            # Refused outright (client closed, queue full): fail the handler, so the bus retries it and,
            # past the bound, dead-letters it. The InferenceCompleted id is stable, so a retry does not duplicate it.
            raise ResultDeliveryError(f"result for {site_id}/{device_id} not sent: {exc}") from exc
        self.metrics.device_results.labels(outcome="acked").inc()

    async def send_alert(self, site_id: str, device_id: str, payload: bytes) -> None:
        """A maintenance alert to the device on ``dt/edgeloop/{site}/{device}/alert`` (QoS 1; a broker that is away
        gets it after the reconnect, as results do: the alert is on Kafka either way)."""
        topic = topics.mqtt_topic(topics.MQTT_ALERT, site=site_id, device=device_id)
        acked = self.client.publish(topic, payload, qos=self.qos)
        acked.add_done_callback(_consume_error)
        if acked.done() and acked.exception() is not None:
            raise ResultDeliveryError(f"alert for {site_id}/{device_id} not sent: {acked.exception()}")


def _consume_error(done: asyncio.Future[None]) -> None:
    """Mark a late failure as seen (it was logged, or the handler stopped waiting)."""
    if not done.cancelled():
        done.exception()
