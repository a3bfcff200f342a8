"""Thin: a device message in (MQTT or HTTP) -> the bridge -> acknowledgement out; a prediction or a
label in -> the labeling service -> SampleLabeled out.

:data:`SUBSCRIPTIONS` is ingest's table: which consumer group handles which event with which handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from edgeloop_common.bus import EventContext, PermanentError
from edgeloop_common.events import InferenceCompleted, Ingress
from edgeloop_common.subscriptions import ConsumerGroup

from edgeloop_ingest.adapters.mqtt import ReceivedMessage
from edgeloop_ingest.bridge import Bridge
from edgeloop_ingest.labeling import BatchLabelResult, LabelingService, PredictionOutcome, Sample, labeled_publication
from edgeloop_ingest.metrics import IngestMetrics
from edgeloop_ingest.service import DeviceMessage, MessageKind, Outcome

log = logging.getLogger(__name__)

_KINDS: dict[str, MessageKind] = {"image": "image", "telemetry": "telemetry"}


def device_message_from_mqtt(topic: str, payload: bytes, *, dup: bool, received_at: datetime) -> DeviceMessage:
    """``dt/edgeloop/{site}/{device}/{image|telemetry}``; the ids are checked by the service (bad ids: a reason)."""
    levels = topic.split("/")
    shaped = len(levels) == 5 and levels[:2] == ["dt", "edgeloop"] and levels[4] in _KINDS
    return DeviceMessage(
        kind=_KINDS[levels[4]] if shaped else "unknown",
        payload=payload,
        ingress="mqtt",
        received_at=received_at,
        device_id=levels[3] if shaped else None,
        site_id=levels[2] if shaped else None,
        mqtt_topic=topic,
        redelivered=dup,
    )


def mqtt_message_handler(bridge: Bridge) -> Callable[[ReceivedMessage], None]:
    """The subscriber's callback: hand the message to the bridge, PUBACK once its outcome is durable."""

    def on_message(received: ReceivedMessage) -> None:
        message = device_message_from_mqtt(
            received.topic, received.payload, dup=received.dup, received_at=datetime.now(UTC)
        )
        ack = received.ack
        bridge.submit(message, lambda _outcome: ack())

    return on_message


async def handle_upload(
    bridge: Bridge, *, payload: bytes, device_id: str | None, site_id: str | None, ingress: Ingress = "http"
) -> Outcome:
    message = DeviceMessage(
        kind="image",
        payload=payload,
        ingress=ingress,
        received_at=datetime.now(UTC),
        device_id=device_id,
        site_id=site_id,
    )
    return await bridge.handle(message)


class IngestHandlers:
    def __init__(self, labeling: LabelingService, metrics: IngestMetrics) -> None:
        self.labeling = labeling
        self.metrics = metrics

    async def on_inference_completed(self, event: InferenceCompleted, context: EventContext) -> None:
        """The sample's prediction (and hard-example verdict). Idempotent: an update by id."""
        outcome = await asyncio.to_thread(self.labeling.record_prediction, event)
        self.metrics.predictions.labels(outcome.value).inc()
        if outcome is PredictionOutcome.UNKNOWN_SAMPLE:
            # Ingest commits a sample before announcing it, so an inference of an unknown sample never will match.
            raise PermanentError(f"InferenceCompleted for sample {event.sample_id!r}, which this ingest does not hold")
        if outcome is PredictionOutcome.STALE:
            log.info("kept the newer prediction of sample %s; event %s is older", event.sample_id, context.event_id)


async def label_sample(
    bridge: Bridge, labeling: LabelingService, sample_id: str, label: str, labeled_by: str
) -> Sample:
    """Store the label, then announce it; returns once SampleLabeled is durable (Kafka or the disk buffer)."""
    sample = await asyncio.to_thread(labeling.label, sample_id, label, labeled_by=labeled_by)
    await bridge.publish_durably([labeled_publication(sample)])
    bridge.metrics.labels.labels("single").inc()
    return sample


async def label_samples(
    bridge: Bridge, labeling: LabelingService, items: Sequence[tuple[str, str]], labeled_by: str
) -> BatchLabelResult:
    result = await asyncio.to_thread(labeling.label_many, items, labeled_by=labeled_by)
    await bridge.publish_durably([labeled_publication(sample) for sample in result.labeled])
    bridge.metrics.labels.labels("batch").inc(len(result.labeled))
    return result


SUBSCRIPTIONS = (ConsumerGroup("ingest-predictions", {InferenceCompleted: IngestHandlers.on_inference_completed}),)
