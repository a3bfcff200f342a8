"""Thin: ImageReceived in -> classify -> InferenceCompleted out, and the result to the device."""

from __future__ import annotations

import asyncio
import json
import uuid

from edgeloop_common.bus import EventBus, EventContext
from edgeloop_common.events import ImageReceived

from edgeloop_inference_gateway.ports import ResultPublisher
from edgeloop_inference_gateway.service import InferenceService, device_result

_INFERENCE_ID_NAMESPACE = uuid.UUID("5b0c1f3e-6a53-4c4e-9f0e-7d1f2f6f2a10")


def inference_event_id(image_event_id: str) -> str:
    """The InferenceCompleted id for an ImageReceived id: the same on every redelivery, so consumers dedupe it."""
    return str(uuid.uuid5(_INFERENCE_ID_NAMESPACE, f"inference-gateway:{image_event_id}"))


class ImageReceivedHandler:
    def __init__(self, service: InferenceService, bus: EventBus, results: ResultPublisher | None) -> None:
        self.service = service
        self.bus = bus
        self.results = results

    async def __call__(self, event: ImageReceived, context: EventContext) -> None:
        completed = await self.service.classify_event(event)
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
            publishing, self.results.send(completed.site_id, completed.device_id, payload), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
