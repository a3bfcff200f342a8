"""The uplink from edge agents: one :class:`~edgeloop_common.uplink.UplinkRecord` per picture an agent answered
at its site, taken once per record id (docs/edge.md, docs/ingest.md "The uplink from edge agents").

What ingest does with a record, in this order -- every step is safe to repeat, so a crash anywhere means the
agent's resend, never a loss and never a second effect:

1. the record's **arrival** is looked up: a record already recorded is a ``duplicate``, nothing is stored or
   published again;
2. the record and its picture are **checked** (a refusal is 4xx with the reason);
3. the picture, when included, is **stored**: the blob (content-addressed, so writing it again is a no-op), then
   the sample row with ``sample_id = record_id`` (inserted only if absent). A resend without the picture of a
   record whose earlier attempt brought it (the agent may drop pictures to stay within its bounds) uses that
   sample, so the resend announces what the first attempt did;
4. ``ImageReceived`` (picture included) and ``InferenceCompleted`` are **published** with event ids derived from
   the record id (:func:`~edgeloop_common.uplink.uplink_event_id`): a resend republishes the same ids, which
   consumers skip;
5. the arrival is **recorded** -- last, so a record answers ``duplicate`` only once its events are durable.

The calls here block (Pillow, file and database I/O); callers in the event loop run them in a thread. Nothing
here knows about HTTP, Kafka or SQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from edgeloop_common.events import BlobRef, ImageReceived, InferenceCompleted, utc_now
from edgeloop_common.tracing import child_traceparent
from edgeloop_common.uplink import (
    SCORED_TELEMETRY_ARRIVAL_DEVICE,
    SCORED_TELEMETRY_KIND,
    ScoredTelemetryRecord,
    UplinkRecord,
    uplink_event_id,
)
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from edgeloop_ingest.blobs import sha256_hex
from edgeloop_ingest.labeling import as_utc
from edgeloop_ingest.service import IngestService, Publication, SampleRecord
from edgeloop_ingest.validation import CONTENT_TYPES, RejectedInput, RejectionCode, validate_image

# The part "record" is a small JSON document (scores, image statistics, joint inference): 1 MiB is far above it.
MAX_RECORD_BYTES = 1024 * 1024
# Where a picture that stayed at the edge is named in InferenceCompleted: edge://{site}/sha256/{sha256}.
EDGE_URI_SCHEME = "edge"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# What the sample store's columns hold (adapters/samples.py): longer text is refused here, not by the database.
_MAX_TEXT = {"mqtt_topic": 256, "inference.model_name": 256, "inference.top_label": 256}


class UplinkRefusedError(Exception):
    """The record can never be taken as sent (400 unless a subclass says otherwise); the agent sets it aside."""


class UnsupportedUplinkRequestError(UplinkRefusedError):
    """The request is not multipart/form-data."""


class InvalidUplinkRecordError(UplinkRefusedError):
    """The part ``record`` is JSON but not an :class:`UplinkRecord` ingest can store."""


class UplinkImageRejectedError(UplinkRefusedError):
    """The picture fails the checks every picture passes (ingest's validation): its reason code and words."""

    def __init__(self, code: RejectionCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class UnknownUplinkRecordError(Exception):
    """No arrival recorded under this record id."""


class UplinkUnavailableError(Exception):
    """Ingest cannot store the record now (the bus or the database is away): 503, the agent retries."""


@dataclass(frozen=True)
class UplinkArrival:
    """A record ingest took: its arrival, recorded once its events were durable."""

    record_id: str
    site_id: str
    device_id: str
    sequence: int
    received_at: datetime
    image_included: bool  # ingest holds the picture: a sample with the record's id
    stored_at: datetime

    @property
    def sample_id(self) -> str | None:
        """The sample stored for the record: only a record whose picture was included has one."""
        return self.record_id if self.image_included else None


@dataclass(frozen=True)
class RecordedArrival:
    inserted: bool  # False: the arrival was there already (a concurrent resend recorded it first)
    highest_sequence_before: int | None  # the device's highest sequence before this record; None for its first


class UplinkArrivalRepository(Protocol):
    def get(self, record_id: str) -> UplinkArrival | None: ...

    def add_if_absent(self, arrival: UplinkArrival) -> RecordedArrival:
        """Record ``arrival`` unless its record id is there; say whether it was, and the device's highest
        sequence before it."""
        ...


def edge_image_uri(site_id: str, sha256: str) -> str:
    """The URI of a picture that stayed at the edge: ``edge://{site}/sha256/{sha256}`` (docs/edge.md)."""
    return f"{EDGE_URI_SCHEME}://{site_id}/sha256/{sha256}"


def is_edge_image_uri(uri: str) -> bool:
    return uri.startswith(f"{EDGE_URI_SCHEME}://")


def parse_uplink_record(document: str | bytes) -> UplinkRecord:
    """The part ``record`` as an :class:`UplinkRecord`, its times in UTC; refused with the reason otherwise."""
    try:
        record = UplinkRecord.model_validate_json(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise UplinkRefusedError(f"part 'record' is not JSON: {errors[0]['msg']}") from exc
        raise InvalidUplinkRecordError(f"part 'record' is not an uplink record: {_describe(errors)}") from exc
    if not _UUID.match(record.record_id):
        raise InvalidUplinkRecordError(
            f"record_id {record.record_id!r} is not a UUID (the sample id the record becomes; docs/edge.md)"
        )
    values = {
        "mqtt_topic": record.mqtt_topic,
        "inference.model_name": record.inference.model_name,
        "inference.top_label": record.inference.top_label,
    }
    for name, limit in _MAX_TEXT.items():
        value = values[name]
        if value is not None and len(value) > limit:
            raise InvalidUplinkRecordError(f"{name} is {len(value)} characters; the limit is {limit}")
    inference = record.inference.model_copy(update={"completed_at": as_utc(record.inference.completed_at)})
    return record.model_copy(update={"received_at": as_utc(record.received_at), "inference": inference})


def _describe(errors: list[ErrorDetails]) -> str:
    """Pydantic's errors as ``field: message; ...`` (at most ten)."""
    parts = []
    for error in errors[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "the record"
        parts.append(f"{where}: {error['msg']}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(parts) + more


@dataclass
class UplinkService:
    ingest: IngestService  # the sample store (blobs, sample rows) and the picture checks every ingress shares
    arrivals: UplinkArrivalRepository
    clock: Callable[[], datetime] = utc_now

    def find(self, record_id: str) -> UplinkArrival | None:
        return self.arrivals.get(record_id)

    def get(self, record_id: str) -> UplinkArrival:
        arrival = self.arrivals.get(record_id)
        if arrival is None:
            raise UnknownUplinkRecordError(f"no uplink record with id {record_id!r}")
        return arrival

    def check(self, record: UplinkRecord, image: bytes | None) -> SampleRecord | None:
        """Check that the picture is there iff the record says so, is the one the record describes, and passes
        ingest's picture checks; return the sample to store (None: the picture stayed at the edge)."""
        if record.image_included and image is None:
            raise UplinkRefusedError(
                f"record {record.record_id} says image_included, but the request has no part 'image'"
            )
        if not record.image_included and image is not None:
            raise UplinkRefusedError(
                f"record {record.record_id} says the picture is not included, but the request has a part 'image'"
            )
        if image is None:
            return None
        if len(image) != record.image_size_bytes:
            raise UplinkRefusedError(
                f"the picture is {len(image)} bytes; record {record.record_id} says {record.image_size_bytes} "
                "(cut short or damaged on the way?)"
            )
        sha256 = sha256_hex(image)
        if sha256 != record.image_sha256:
            raise UplinkRefusedError(
                f"the picture's sha256 is {sha256}; record {record.record_id} says {record.image_sha256} "
                "(damaged on the way, or another picture?)"
            )
        try:
            info = validate_image(image, self.ingest.limits)
        except RejectedInput as rejection:
            raise UplinkImageRejectedError(rejection.code, rejection.reason) from rejection
        if info.format != record.image_format:
            raise UplinkRefusedError(
                f"the picture is a {info.format.upper()}; record {record.record_id} says {record.image_format.upper()}"
            )
        if (info.width, info.height) != (record.width, record.height):
            raise UplinkRefusedError(
                f"the picture is {info.width}x{info.height}; record {record.record_id} says "
                f"{record.width}x{record.height}"
            )
        return SampleRecord(
            sample_id=record.record_id,
            device_id=record.device_id,
            site_id=record.site_id,
            received_at=record.received_at,
            sha256=sha256,
            size_bytes=len(image),
            format=info.format,
            width=info.width,
            height=info.height,
            ingress="edge",
            mqtt_topic=record.mqtt_topic,
            blob_uri=self.ingest.blobs.uri(sha256),
        )

    def store(self, sample: SampleRecord, image: bytes) -> None:
        """The blob (durable: one group commit), then the sample row unless a resend stored it already."""
        self.ingest.blobs.put_many([(image, sample.sha256)])
        self.ingest.samples.add_if_absent(sample)

    def record_arrival(self, record: UplinkRecord, *, has_sample: bool) -> RecordedArrival:
        """``has_sample``: ingest holds the record's picture (brought by this request or an earlier attempt)."""
        arrival = UplinkArrival(
            record_id=record.record_id,
            site_id=record.site_id,
            device_id=record.device_id,
            sequence=record.sequence,
            received_at=record.received_at,
            image_included=has_sample,
            stored_at=self.clock(),
        )
        return self.arrivals.add_if_absent(arrival)


def uplink_publications(
    record: UplinkRecord, sample: SampleRecord | None, *, traceparent: str | None = None
) -> list[Publication]:
    """What a record announces, in order: ImageReceived for its sample (picture included), then
    InferenceCompleted for what the device was answered. Event ids come from the record id; keyed by device."""
    publications = []
    image: BlobRef
    if sample is not None:
        image = sample.blob_ref()
        received = ImageReceived(
            sample_id=sample.sample_id,
            device_id=sample.device_id,
            site_id=sample.site_id,
            received_at=sample.received_at,
            image=image,
            format=sample.format,
            width=sample.width,
            height=sample.height,
            ingress="edge",
            mqtt_topic=sample.mqtt_topic,
        )
        publications.append(_publication(received, record, "images.received", traceparent))
    else:
        image = BlobRef(
            sha256=record.image_sha256,
            uri=edge_image_uri(record.site_id, record.image_sha256),
            content_type=CONTENT_TYPES[record.image_format],
            size_bytes=record.image_size_bytes,
        )
    inference = record.inference
    completed = InferenceCompleted(
        sample_id=record.record_id,
        device_id=record.device_id,
        site_id=record.site_id,
        image=image,
        model_name=inference.model_name,
        model_version=inference.model_version,
        scores=dict(inference.scores),
        top_label=inference.top_label,
        confidence=inference.confidence,
        latency_ms=inference.latency_ms,
        served_by=inference.served_by,
        hard_example=inference.hard_example,
        hard_example_reason=inference.hard_example_reason,
        image_stats=dict(inference.image_stats),
        quality=inference.quality,
        joint=inference.joint,
        completed_at=inference.completed_at,
    )
    publications.append(_publication(completed, record, "inferences.completed", traceparent))
    return publications


def _publication(
    event: ImageReceived | InferenceCompleted, record: UplinkRecord, kind: str, traceparent: str | None
) -> Publication:
    return Publication(
        event=event,
        event_id=uplink_event_id(record.record_id, kind),
        key=record.device_id,
        traceparent=child_traceparent(traceparent),
    )


# --- scored telemetry (docs/telemetry.md, "Scoring at the edge") ------------------------------------------------


def parse_scored_telemetry_record(document: str | bytes) -> ScoredTelemetryRecord | None:
    """The part ``record`` as an edge agent's scored telemetry; None when it is not of that kind (a picture's
    record, or not JSON: the picture path says why). Refused with the reason when it is, but malformed."""
    try:
        head = json.loads(document)
    except (ValueError, RecursionError):
        return None
    if not isinstance(head, dict) or head.get("kind") != SCORED_TELEMETRY_KIND:
        return None
    try:
        record = ScoredTelemetryRecord.model_validate(head)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise InvalidUplinkRecordError(f"part 'record' is not a scored-telemetry record: {_describe(errors)}") from exc
    if not _UUID.match(record.record_id):
        raise InvalidUplinkRecordError(f"record_id {record.record_id!r} is not a UUID")
    strangers = ({e.site_id for e in record.scored} | {a.site_id for a in record.alerts}) - {record.site_id}
    if strangers:
        raise InvalidUplinkRecordError(
            f"record {record.record_id} of site {record.site_id!r} carries scores of other sites: {sorted(strangers)}"
        )
    return record


def scored_telemetry_arrival(record: ScoredTelemetryRecord, stored_at: datetime) -> UplinkArrival:
    """Its arrival, in the uplink records' table under a device id no device can have (one sequence per site)."""
    return UplinkArrival(
        record_id=record.record_id,
        site_id=record.site_id,
        device_id=SCORED_TELEMETRY_ARRIVAL_DEVICE,
        sequence=record.sequence,
        received_at=as_utc(record.created_at),
        image_included=False,
        stored_at=stored_at,
    )


def scored_telemetry_publications(
    record: ScoredTelemetryRecord, *, traceparent: str | None = None
) -> list[Publication]:
    """Every TelemetryScored, then every MaintenanceAlert of the record, with ids from the record id (a resend
    republishes the same ids), keyed by device."""
    publications = [
        Publication(
            event=event,
            event_id=uplink_event_id(record.record_id, f"telemetry.scored/{index}"),
            key=event.device_id,
            traceparent=child_traceparent(traceparent),
        )
        for index, event in enumerate(record.scored)
    ]
    publications += [
        Publication(
            event=alert,
            event_id=uplink_event_id(record.record_id, f"maintenance.alerts/{index}"),
            key=alert.device_id,
            traceparent=child_traceparent(traceparent),
        )
        for index, alert in enumerate(record.alerts)
    ]
    return publications
