"""The ingest logic: a device message in, an event to publish out.

An image is validated, stored content-addressed, recorded as a sample and
announced by an ImageReceived event carrying the blob reference; telemetry is
validated and announced by a TelemetryReceived event; anything that cannot be
accepted becomes a DeadLetter (MQTT) or a reason for the HTTP client.

The calls here block (Pillow, file and database I/O); the bridge runs them in
worker threads. Nothing here knows about MQTT, Kafka or HTTP.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, Protocol

from edgeloop_common.events import BlobRef, DeadLetter, Event, ImageFormat, ImageReceived, Ingress, TelemetryReceived
from edgeloop_common.ids import random_uuid_str
from edgeloop_common.tracing import new_traceparent

from edgeloop_ingest.blobs import BlobStore, sha256_hex
from edgeloop_ingest.validation import (
    CONTENT_TYPES,
    ImageLimits,
    RejectedInput,
    RejectionCode,
    check_id,
    parse_telemetry,
    validate_image,
)

SERVICE_NAME = "ingest"
MessageKind = Literal["image", "telemetry", "unknown"]
# ImageReceived event ids are derived from the sample id, so publishing a sample twice
# (a redelivered MQTT message, a re-drained buffer) carries the same ce_id and consumers skip the copy.
_EVENT_ID_NAMESPACE = uuid.UUID("5b0f6c8e-2d4e-4f0a-9a57-6a1f3c9e7d21")


@dataclass(frozen=True)
class DeviceMessage:
    """One message from a device, over MQTT or HTTP."""

    kind: MessageKind
    payload: bytes
    ingress: Ingress
    received_at: datetime
    device_id: str | None = None
    site_id: str | None = None
    mqtt_topic: str | None = None
    redelivered: bool = False  # MQTT DUP flag: the broker sent this message before
    # The trace the events of this message continue (ingest's receiving span; docs/observability.md); None: a
    # new trace per event.
    traceparent: str | None = None


@dataclass(frozen=True)
class SampleRecord:
    sample_id: str
    device_id: str
    site_id: str
    received_at: datetime
    sha256: str
    size_bytes: int
    format: ImageFormat
    width: int
    height: int
    ingress: Ingress
    mqtt_topic: str | None
    blob_uri: str

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def blob_ref(self) -> BlobRef:
        return BlobRef(
            sha256=self.sha256, uri=self.blob_uri, content_type=self.content_type, size_bytes=self.size_bytes
        )


class SampleRepository(Protocol):
    def add_many(self, records: Sequence[SampleRecord]) -> None: ...

    def add_if_absent(self, record: SampleRecord) -> bool:
        """Insert ``record`` unless a sample with its id is there; True when inserted (an uplink resend: False)."""
        ...

    def get(self, sample_id: str) -> SampleRecord | None: ...

    def find_recent(self, *, device_id: str, sha256: str, since: datetime) -> SampleRecord | None: ...


@dataclass(frozen=True)
class Publication:
    """An event to hand to the bus, with the id and key it must keep through any retry."""

    event: Event
    event_id: str
    key: str
    traceparent: str = field(default_factory=new_traceparent)


@dataclass(frozen=True)
class Accepted:
    publication: Publication
    # A telemetry batch's later samples' events, published after ``publication`` in order; the message is
    # acknowledged once all are durable.
    more_publications: tuple[Publication, ...] = ()
    new_sample: SampleRecord | None = None  # to record before publishing; None for telemetry and redeliveries
    blob: bytes | None = field(default=None, repr=False)  # the new sample's image, stored by ``record``
    sample: SampleRecord | None = None
    redelivery: bool = False

    @property
    def publications(self) -> tuple[Publication, ...]:
        return (self.publication, *self.more_publications)


@dataclass(frozen=True)
class Rejected:
    code: RejectionCode
    reason: str
    publication: Publication | None = None  # the DeadLetter, for device messages over MQTT


Outcome = Accepted | Rejected


@dataclass
class IngestService:
    blobs: BlobStore
    samples: SampleRepository
    limits: ImageLimits
    max_telemetry_bytes: int = 64 * 1024
    dead_letter_max_payload_bytes: int = 256 * 1024
    redelivery_window: timedelta = field(default_factory=lambda: timedelta(minutes=10))

    def prepare(self, message: DeviceMessage) -> Outcome:
        """Validate, and say what must be stored before the event is published (``record`` stores it). Blocking."""
        outcome = self._prepare(message)
        publication = outcome.publication
        if message.traceparent is None or publication is None or publication.traceparent == message.traceparent:
            return outcome  # (a telemetry batch's publications all carry the message's trace already)
        return replace(outcome, publication=replace(publication, traceparent=message.traceparent))

    def _prepare(self, message: DeviceMessage) -> Outcome:
        try:
            if message.kind == "unknown":
                raise RejectedInput(
                    RejectionCode.BAD_TOPIC,
                    f"topic {message.mqtt_topic!r} is neither dt/edgeloop/{{site}}/{{device}}/image nor .../telemetry",
                )
            device_id = check_id(message.device_id, "device id")
            site_id = check_id(message.site_id, "site id")
            if message.kind == "image":
                return self._accept_image(message, device_id=device_id, site_id=site_id)
            return self._accept_telemetry(message, device_id=device_id, site_id=site_id)
        except RejectedInput as rejection:
            return self.reject(message, rejection)

    def record(self, outcomes: Sequence[Outcome]) -> None:
        """Store the new samples' images (one group commit) and record the samples (one transaction). Blocking.

        The images first: a recorded sample always has its blob.
        """
        new = [o for o in outcomes if isinstance(o, Accepted) and o.new_sample is not None]
        self.blobs.put_many([(o.blob, o.new_sample.sha256) for o in new if o.blob is not None and o.new_sample])
        self.samples.add_many([o.new_sample for o in new if o.new_sample is not None])

    def reject(self, message: DeviceMessage, rejection: RejectedInput) -> Rejected:
        if message.ingress != "mqtt":
            return Rejected(code=rejection.code, reason=rejection.reason)
        dead_letter = self.dead_letter(message, rejection)
        key = dead_letter.device_id or dead_letter.original_key or ""
        return Rejected(
            code=rejection.code,
            reason=rejection.reason,
            publication=Publication(event=dead_letter, event_id=str(uuid.uuid4()), key=key),
        )

    def dead_letter(self, message: DeviceMessage, rejection: RejectedInput) -> DeadLetter:
        """The original bytes go along whole up to ``dead_letter_max_payload_bytes``, else a prefix, said so."""
        kept = message.payload[: self.dead_letter_max_payload_bytes]
        truncated = len(kept) < len(message.payload)
        reason = rejection.reason
        headers = {"mqtt_qos": "1", "mqtt_dup": str(message.redelivered).lower(), "ingress": message.ingress}
        if truncated:
            reason += f" (this dead letter keeps the first {len(kept)} of {len(message.payload)} bytes)"
            headers["original_value_truncated"] = "true"
        return DeadLetter(
            reason=reason,
            error_type=f"rejected:{rejection.code.value}",
            service=SERVICE_NAME,
            attempts=1,
            original_topic=message.mqtt_topic or "",
            original_key=message.device_id,
            original_value_b64=base64.b64encode(kept).decode(),
            original_headers=headers,
            original_size_bytes=len(message.payload),
            mqtt_topic=message.mqtt_topic,
            device_id=message.device_id[:200] if message.device_id else None,
            site_id=message.site_id[:200] if message.site_id else None,
        )

    def _accept_image(self, message: DeviceMessage, *, device_id: str, site_id: str) -> Accepted:
        info = validate_image(message.payload, self.limits)
        sha256 = sha256_hex(message.payload)
        if message.redelivered:
            earlier = self.samples.find_recent(
                device_id=device_id, sha256=sha256, since=message.received_at - self.redelivery_window
            )
            if earlier is not None:
                return Accepted(publication=image_publication(earlier), sample=earlier, redelivery=True)
        record = SampleRecord(
            sample_id=str(uuid.uuid4()),
            device_id=device_id,
            site_id=site_id,
            received_at=message.received_at,
            sha256=sha256,
            size_bytes=len(message.payload),
            format=info.format,
            width=info.width,
            height=info.height,
            ingress=message.ingress,
            mqtt_topic=message.mqtt_topic,
            blob_uri=self.blobs.uri(sha256),
        )
        return Accepted(publication=image_publication(record), new_sample=record, sample=record, blob=message.payload)

    def _accept_telemetry(self, message: DeviceMessage, *, device_id: str, site_id: str) -> Accepted:
        """A TelemetryReceived per sample (a batch's in order, on the device's key), all in the message's trace."""
        samples = parse_telemetry(message.payload, max_bytes=self.max_telemetry_bytes)
        # The message's trace from the start (``prepare`` would otherwise copy the outcome to set it).
        traceparent = message.traceparent or new_traceparent()
        publications = [
            Publication(
                event=TelemetryReceived(
                    device_id=device_id,
                    site_id=site_id,
                    received_at=message.received_at,
                    measured_at=sample.measured_at,
                    readings=sample.readings,
                    mqtt_topic=message.mqtt_topic,
                    machine_event=sample.machine_event,
                ),
                event_id=random_uuid_str(),
                key=device_id,
                traceparent=traceparent,
            )
            for sample in samples
        ]
        return Accepted(publication=publications[0], more_publications=tuple(publications[1:]))

    def get_sample(self, sample_id: str) -> SampleRecord | None:
        return self.samples.get(sample_id)

    def read_image(self, record: SampleRecord) -> bytes:
        return self.blobs.get(record.sha256)


def image_publication(record: SampleRecord) -> Publication:
    event = ImageReceived(
        sample_id=record.sample_id,
        device_id=record.device_id,
        site_id=record.site_id,
        received_at=record.received_at,
        image=record.blob_ref(),
        format=record.format,
        width=record.width,
        height=record.height,
        ingress=record.ingress,
        mqtt_topic=record.mqtt_topic,
    )
    event_id = str(uuid.uuid5(_EVENT_ID_NAMESPACE, record.sample_id))
    return Publication(event=event, event_id=event_id, key=record.device_id)


def refusal_publication(publication: Publication, error: BaseException, *, keep_bytes: int = 64 * 1024) -> Publication:
    """A DeadLetter for an event Kafka refuses outright (too large, ...), so it does not block what follows."""
    event = publication.event
    body = event.model_dump_json().encode()
    dead_letter = DeadLetter(
        reason=f"Kafka refused this {type(event).__name__} event: {error}",
        error_type=type(error).__name__,
        service=SERVICE_NAME,
        attempts=1,
        original_topic=event.topic,
        original_key=publication.key,
        original_value_b64=base64.b64encode(body[:keep_bytes]).decode(),
        original_headers={"ce_id": publication.event_id, "ce_type": event.event_type},
        original_size_bytes=len(body),
        mqtt_topic=getattr(event, "mqtt_topic", None),
        device_id=getattr(event, "device_id", None),
        site_id=getattr(event, "site_id", None),
    )
    event_id = str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"refused:{publication.event_id}"))
    return Publication(event=dead_letter, event_id=event_id, key=publication.key, traceparent=publication.traceparent)
