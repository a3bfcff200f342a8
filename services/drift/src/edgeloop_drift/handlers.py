"""Thin: InferenceCompleted / SampleLabeled / TelemetryScored in -> the drift service -> DriftDetected,
TrainingRequested out.

:data:`SUBSCRIPTIONS` is the drift service's table: which consumer group handles which event with which handler.

A handler that fails to publish is retried by the bus with the same event. The
event must not be counted twice in the windows, so what it produced waits
under the event's id and the retry publishes that again. Published events have
ids derived from the event that caused them: a retry that publishes one twice
yields a duplicate that consumers skip.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from edgeloop_common.bus import EventBus, EventContext
from edgeloop_common.events import InferenceCompleted, SampleLabeled, TelemetryScored
from edgeloop_common.subscriptions import ConsumerGroup
from edgeloop_common.tracing import child_traceparent

from edgeloop_drift.service import DriftService, Reaction

_ID_NAMESPACE = uuid.UUID("5b0f7c52-4f5e-4d0c-9a4e-6f1d2b8a7c31")
_PENDING_LIMIT = 1000


def derived_event_id(cause_id: str, index: int) -> str:
    """The id of the ``index``-th event published because of event ``cause_id``."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"drift:{cause_id}:{index}"))


class DriftHandlers:
    def __init__(self, service: DriftService, bus: EventBus) -> None:
        self.service = service
        self.bus = bus
        self._pending: OrderedDict[str, Reaction] = OrderedDict()

    async def on_inference_completed(self, event: InferenceCompleted, context: EventContext) -> None:
        reaction = self._pending.get(context.event_id)
        if reaction is None:
            reaction = await self.service.observe_inference(event)
        await self._publish(reaction, context)

    async def on_telemetry_scored(self, event: TelemetryScored, context: EventContext) -> None:
        reaction = self._pending.get(context.event_id)
        if reaction is None:
            reaction = await self.service.observe_telemetry(event)
        await self._publish(reaction, context)

    async def on_sample_labeled(self, event: SampleLabeled, context: EventContext) -> None:
        reaction = self._pending.get(context.event_id)
        if reaction is None:
            reaction = self.service.observe_label(event)
        await self._publish(reaction, context)

    async def _publish(self, reaction: Reaction, context: EventContext) -> None:
        events = reaction.events()
        if not events:
            return
        self._pending[context.event_id] = reaction
        while len(self._pending) > _PENDING_LIMIT:
            self._pending.popitem(last=False)
        for index, event in enumerate(events):
            await self.bus.publish(
                event,
                event_id=derived_event_id(context.event_id, index),
                traceparent=child_traceparent(context.traceparent),
            )
        self._pending.pop(context.event_id, None)


SUBSCRIPTIONS: tuple[ConsumerGroup[DriftHandlers], ...] = (
    ConsumerGroup(
        "drift",
        {
            InferenceCompleted: DriftHandlers.on_inference_completed,
            SampleLabeled: DriftHandlers.on_sample_labeled,
        },
    ),
    # Sensor features (docs/telemetry.md, "Drift on readings"): a group of its own, so that thousands of scored
    # readings a second never hold up the image model's events.
    ConsumerGroup("drift-telemetry", {TelemetryScored: DriftHandlers.on_telemetry_scored}),
)
