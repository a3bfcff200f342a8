"""Thin: a device message in (MQTT or HTTP) -> the bridge -> acknowledgement out; a prediction or a
label in -> the labeling service -> SampleLabeled out; an edge agent's uplink record in -> the uplink
service -> ImageReceived and InferenceCompleted out.

:data:`SUBSCRIPTIONS` is ingest's table: which consumer group handles which event with which handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from edgeloop_common import otel
from edgeloop_common.bus import BusUnavailableError, EventBus, EventContext, PermanentError
from edgeloop_common.events import DeadLetter, InferenceCompleted, Ingress
from edgeloop_common.subscriptions import ConsumerGroup
from edgeloop_common.uplink import ScoredTelemetryRecord, UplinkAnswer
from opentelemetry.trace import SpanKind

from edgeloop_ingest.adapters.mqtt import ReceivedMessage
from edgeloop_ingest.adapters.uplink_records import STORE_UNAVAILABLE_ERRORS
from edgeloop_ingest.bridge import Bridge
from edgeloop_ingest.dead_letters import DeadLetterRepository, KeptDeadLetter
from edgeloop_ingest.labeling import BatchLabelResult, LabelingService, PredictionOutcome, Sample, labeled_publication
from edgeloop_ingest.metrics import IngestMetrics
from edgeloop_ingest.service import DeviceMessage, MessageKind, Outcome, Publication
from edgeloop_ingest.uplink import (
    InvalidUplinkRecordError,
    UplinkRefusedError,
    UplinkService,
    UplinkUnavailableError,
    is_edge_image_uri,
    parse_scored_telemetry_record,
    parse_uplink_record,
    scored_telemetry_arrival,
    scored_telemetry_publications,
    uplink_publications,
)

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

_KINDS: dict[str, MessageKind] = {"image": "image", "telemetry": "telemetry"}


def device_message_from_mqtt(
    topic: str, payload: bytes, *, dup: bool, received_at: datetime, traceparent: str | None = None
) -> DeviceMessage:
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
        traceparent=traceparent,
    )


def mqtt_message_handler(bridge: Bridge) -> Callable[[ReceivedMessage], None]:
    """The subscriber's callback: hand the message to the bridge, PUBACK once its outcome is durable."""

    def on_message(received: ReceivedMessage) -> None:
        # From receipt to durable (in Kafka, or refused with a reason): ingest's span of the device's trace.
        span, traceparent = otel.started_span(
            "mqtt receive",
            otel.traceparent_property(received.user_properties),
            service="ingest",
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "mqtt", "messaging.destination.name": received.topic},
        )
        message = device_message_from_mqtt(
            received.topic, received.payload, dup=received.dup, received_at=datetime.now(UTC), traceparent=traceparent
        )
        ack = received.ack

        def durable(_outcome: Outcome) -> None:
            ack()
            span.end()

        bridge.submit(message, durable)

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
    def __init__(self, labeling: LabelingService, dead_letters: DeadLetterRepository, metrics: IngestMetrics) -> None:
        self.labeling = labeling
        self.dead_letters = dead_letters
        self.metrics = metrics

    async def on_dead_letter(self, event: DeadLetter, context: EventContext) -> None:
        """Keep what any service gave up on, for the console and ``GET /v1/dead-letters``. Idempotent by event id."""
        await asyncio.to_thread(self.dead_letters.add, KeptDeadLetter.of(event, context.event_id))

    async def on_inference_completed(self, event: InferenceCompleted, context: EventContext) -> None:
        """The sample's prediction (and hard-example verdict). Idempotent: an update by id."""
        if is_edge_image_uri(event.image.uri):
            # An edge record forwarded without its picture: the picture stayed at the edge, so there is no sample
            # here to hold the prediction, and nothing a person could label.
            self.metrics.predictions.labels("picture_at_edge").inc()
            if event.hard_example:
                log.warning(
                    "hard example %s of %s/%s came without its picture (%s): not queued for labeling",
                    event.sample_id,
                    event.site_id,
                    event.device_id,
                    event.image.uri,
                )
            return
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


async def handle_uplink(
    uplink: UplinkService,
    bus: EventBus,
    metrics: IngestMetrics,
    *,
    record_document: str | bytes,
    image: bytes | None,
    traceparent: str | None = None,
) -> UplinkAnswer:
    """Take one uplink record (the steps and why their order is crash-safe: :mod:`edgeloop_ingest.uplink`).

    Raises UplinkRefusedError (and its kinds) for a record that can never be taken, UplinkUnavailableError
    when the bus or the sample store cannot take it now.
    """
    scored = parse_scored_telemetry_record(record_document)
    if scored is not None:
        if image is not None:
            raise UplinkRefusedError(f"scored-telemetry record {scored.record_id} comes with a part 'image'")
        return await handle_scored_telemetry(uplink, bus, scored, traceparent=traceparent)
    record = parse_uplink_record(record_document)
    arrival = await _storing(uplink.find, record.record_id)
    if arrival is not None:
        return UplinkAnswer(record_id=record.record_id, status="duplicate", sample_id=arrival.sample_id)
    sample = await asyncio.to_thread(uplink.check, record, image)
    if sample is not None and image is not None:
        await _storing(uplink.store, sample, image)
    else:  # an earlier attempt may have brought the picture, which the agent dropped since (its queue's bounds)
        sample = await _storing(uplink.ingest.get_sample, record.record_id)
    await _publish(bus, uplink_publications(record, sample, traceparent=traceparent))
    recorded = await _storing(uplink.record_arrival, record, has_sample=sample is not None)
    highest = recorded.highest_sequence_before
    if recorded.inserted and highest is not None and record.sequence < highest:
        metrics.uplink_out_of_order.inc()
        log.info(
            "uplink record %s of %s/%s arrived out of order: sequence %d after %d",
            record.record_id,
            record.site_id,
            record.device_id,
            record.sequence,
            highest,
        )
    status = "stored" if recorded.inserted else "duplicate"  # duplicate: a concurrent resend recorded it first
    return UplinkAnswer(record_id=record.record_id, status=status, sample_id=sample.sample_id if sample else None)


async def handle_scored_telemetry(
    uplink: UplinkService, bus: EventBus, record: ScoredTelemetryRecord, *, traceparent: str | None = None
) -> UplinkAnswer:
    """An edge agent's scored telemetry: publish its scores and alerts, then record the arrival (once per record
    id, as for pictures: a resend after a lost answer publishes the same event ids, or answers duplicate)."""
    if await _storing(uplink.find, record.record_id) is not None:
        return UplinkAnswer(record_id=record.record_id, status="duplicate")
    await _publish(bus, scored_telemetry_publications(record, traceparent=traceparent))
    recorded = await _storing(uplink.arrivals.add_if_absent, scored_telemetry_arrival(record, uplink.clock()))
    return UplinkAnswer(record_id=record.record_id, status="stored" if recorded.inserted else "duplicate")


async def _storing(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking store call in a thread; the store being away is UplinkUnavailableError (503, retried)."""
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except STORE_UNAVAILABLE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UplinkUnavailableError(f"the sample store cannot take the record now: {reason}") from exc


async def _publish(bus: EventBus, publications: Sequence[Publication]) -> None:
    """Hand the events to the bus in order (pipelined) and wait until each is durable."""
    acks: list[Awaitable[str]] = []
    refused: BaseException | None = None
    try:
        for p in publications:
            acks.append(await bus.enqueue(p.event, key=p.key, event_id=p.event_id, traceparent=p.traceparent))
    except (BusUnavailableError, PermanentError) as exc:
        refused = exc
    results = await asyncio.gather(*acks, return_exceptions=True)  # those handed over settle either way
    for result in (refused, *results):
        if isinstance(result, BusUnavailableError):
            raise UplinkUnavailableError(f"the event bus cannot take the record's events now: {result}") from result
        if isinstance(result, PermanentError):
            raise InvalidUplinkRecordError(f"the event bus refuses the record's events: {result}") from result
        if isinstance(result, BaseException):
            raise result


SUBSCRIPTIONS = (
    ConsumerGroup("ingest-predictions", {InferenceCompleted: IngestHandlers.on_inference_completed}),
    ConsumerGroup("ingest-dead-letters", {DeadLetter: IngestHandlers.on_dead_letter}),
)
