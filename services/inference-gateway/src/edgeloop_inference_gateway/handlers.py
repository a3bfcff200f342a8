"""Thin: ImageReceived in -> classify -> InferenceCompleted out, and the result to the device; DeploymentUpdated in
-> the site's route. An ImageReceived an edge agent forwarded (``ingress="edge"``) was answered at its site: it is
counted (``edgeloop_images_skipped_total{reason="answered_at_edge"}``) and not classified again.

:data:`SUBSCRIPTIONS` is the gateway's table: which consumer group handles which event with which handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence

from edgeloop_common.bus import EventBus, EventContext, PermanentError
from edgeloop_common.events import DeploymentUpdated, ImageReceived, TelemetryReceived
from edgeloop_common.serving import RouteConfigError, UnclassifiableError
from edgeloop_common.subscriptions import ConsumerGroup

from edgeloop_inference_gateway.ports import ResultPublisher
from edgeloop_inference_gateway.service import InferenceService, device_result
from edgeloop_inference_gateway.telemetry import GatewayTelemetry

log = logging.getLogger(__name__)

_INFERENCE_ID_NAMESPACE = uuid.UUID("5b0c1f3e-6a53-4c4e-9f0e-7d1f2f6f2a10")
# How long an image waits for the routes to replay the deployments at start before its attempt fails (and is retried).
ROUTES_CATCH_UP_TIMEOUT_S = 30.0


def inference_event_id(image_event_id: str) -> str:
    """The InferenceCompleted id for an ImageReceived id: the same on every redelivery, so consumers dedupe it."""
    return str(uuid.uuid5(_INFERENCE_ID_NAMESPACE, f"inference-gateway:{image_event_id}"))


class GatewayHandlers:
    def __init__(
        self,
        service: InferenceService,
        bus: EventBus,
        results: ResultPublisher | None,
        telemetry: GatewayTelemetry | None = None,
    ) -> None:
        self.service = service
        self.bus = bus
        self.results = results
        self.telemetry = telemetry

    async def on_image_received(self, event: ImageReceived, context: EventContext) -> None:
        if event.ingress == "edge":  # an edge agent answered this picture at its site and forwarded it: done
            self.service.metrics.images_skipped.labels(reason="answered_at_edge").inc()
            log.debug("image %s of %s answered at the edge: not classified again", event.sample_id, event.device_id)
            return
        if not self.bus.caught_up():  # the routes replay the deployments first: classify with the current one
            await self.bus.wait_until_caught_up(ROUTES_CATCH_UP_TIMEOUT_S)
        try:
            completed = await self.service.classify_event(event)
        except UnclassifiableError as exc:  # no retry helps: dead-lettered at once
            raise PermanentError(str(exc)) from exc
        publishing = self.bus.publish(
            completed, event_id=inference_event_id(context.event_id), traceparent=context.traceparent
        )
        if self.results is None:
            await publishing
            return
        # The device's answer does not wait for Kafka's acknowledgement of the event (about 1.5 ms): both go
        # out at once, and the handler succeeds only when both did. If either fails the bus redelivers the
        # ImageReceived and both are sent again -- the event under the same id (consumers dedupe it), the
        # result possibly a second time (a device may get the same answer twice; at least once).
        payload = json.dumps(device_result(completed), separators=(",", ":")).encode()
        outcomes = await asyncio.gather(
            publishing,
            self.results.send(completed.site_id, completed.device_id, payload, traceparent=context.traceparent),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def on_telemetry_received(self, deliveries: Sequence[tuple[TelemetryReceived, EventContext]]) -> None:
        """Readings (a partition's fetched batch, in order) into the failure-model scorer (docs/telemetry.md,
        "Scoring"); scores go out in batches. It raises only before taking any (the service stopped)."""
        if self.telemetry is not None:
            await self.telemetry.take([event for event, _ in deliveries])

    async def on_deployment_updated(self, event: DeploymentUpdated, context: EventContext) -> None:
        """Routes follow the deployer: a node group that serves a new version routes its site there (the failure
        model's deployments move the telemetry routes only)."""
        telemetry = self.telemetry
        router = self.service.router
        if telemetry is not None and event.model_name == telemetry.router.default.model_name:
            router = telemetry.router
        try:
            router.follow_deployment(event)
        except RouteConfigError as exc:
            raise PermanentError(
                f"cannot route site {event.node_group!r} to {event.model_name}:{event.actual_version}: {exc}"
            ) from exc


SUBSCRIPTIONS = (
    ConsumerGroup("inference-gateway", {ImageReceived: GatewayHandlers.on_image_received}),
    # Many small events: handled a batch at a time (one span, one processed-record pass and one commit per batch).
    ConsumerGroup(
        "inference-gateway-telemetry", batch_handlers={TelemetryReceived: GatewayHandlers.on_telemetry_received}
    ),
    # Broadcast: every replica reads every DeploymentUpdated, the compacted topic's history first, so that each
    # holds every route (docs/gateway.md, "Routes").
    ConsumerGroup(
        "inference-gateway-routes", {DeploymentUpdated: GatewayHandlers.on_deployment_updated}, broadcast=True
    ),
)
