"""What crosses the edge-cloud link: an edge agent's uplink records, as ingest's uplink API receives them.

An edge agent answers devices at its site and forwards to the cloud, through a durable queue at the edge, one
:class:`UplinkRecord` per picture it answered: always the inference (the cloud's drift and accuracy views need
every one), and the picture itself when the site's uplink policy says so (hard examples always; a sample of the
rest). The transport is HTTPS to ingest (docs/edge.md says why):

    POST {ingest}/v1/uplink        multipart/form-data: part ``record`` (this JSON), part ``image`` (bytes, when
                                   ``image_included``)

Ingest answers 200 ``{"record_id", "status": "stored" | "duplicate"}`` once what the record carries is durable in
the cloud (blob and sample stored, events handed to the bus), 4xx with a reason for a record it can never take
(the agent sets it aside, counted and logged), 503 when it cannot store now (the agent retries). Arrival is
idempotent on ``record_id``: a resend after a lost answer stores nothing twice and publishes the same event ids,
so consumers drop the repeat.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeloop_common.events import (
    ImageFormat,
    ImageQuality,
    JointInference,
    MaintenanceAlert,
    ServedBy,
    TelemetryScored,
)
from edgeloop_common.topics import ID_PATTERN

UPLINK_PATH = "/v1/uplink"
RECORD_PART = "record"
IMAGE_PART = "image"

UplinkStatus = Literal["stored", "duplicate"]

# The namespace of the event ids ingest derives from a record id (uuid5), so a resent record republishes the
# same ids and idempotent consumers do nothing twice.
UPLINK_EVENT_NAMESPACE = uuid.UUID("4f7c1a52-52c5-4b8e-9d0f-5b0e2d1c7a10")


def uplink_event_id(record_id: str, event_kind: str) -> str:
    """The id of the ``event_kind`` event ("images.received", "inferences.completed") ingest publishes for a
    record: the same on every resend of that record."""
    return str(uuid.uuid5(UPLINK_EVENT_NAMESPACE, f"{record_id}/{event_kind}"))


class EdgeInference(BaseModel):
    """The answer the device got at the edge (InferenceCompleted without what ingest adds: the image's blob)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    model_version: int = Field(ge=0)
    scores: dict[str, float]
    top_label: str
    confidence: float = Field(ge=0.0, le=1.0)
    latency_ms: float = Field(ge=0.0)
    served_by: ServedBy
    hard_example: bool = False
    hard_example_reason: str | None = None
    image_stats: dict[str, float] = Field(default_factory=dict)
    quality: ImageQuality = "ok"
    joint: JointInference | None = None
    completed_at: datetime


class UplinkRecord(BaseModel):
    """One picture an edge agent answered, as forwarded to the cloud."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_id: str = Field(description="the sample id, made at the edge; unique across sites (a UUID)")
    site_id: str = Field(pattern=rf"^{ID_PATTERN}$")
    device_id: str = Field(pattern=rf"^{ID_PATTERN}$")
    # Per device, from 1, in the order the agent accepted the device's pictures: ingest can tell a gap or a
    # reordering, and the sample store keeps it (docs/edge.md).
    sequence: int = Field(ge=1)
    received_at: datetime = Field(description="when the edge agent received the picture")
    mqtt_topic: str | None = None
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    image_size_bytes: int = Field(gt=0)
    image_format: ImageFormat
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    image_included: bool = Field(description="whether the request carries the picture (the site's uplink policy)")
    inference: EdgeInference


# Scored telemetry (docs/telemetry.md, "Scoring at the edge"): an edge agent scores its site's readings and sends
# the cloud only the scores and alerts, never a raw reading, a batch per record, through the same POST /v1/uplink
# (part "record" only). Ingest publishes each with an id from uplink_event_id(record_id, f"{kind}/{index}").
SCORED_TELEMETRY_KIND: Literal["telemetry_scored"] = "telemetry_scored"
# The device_id under which ingest records the arrival of a scored-telemetry record (not a valid device id, so
# it never mixes with a device's picture sequence).
SCORED_TELEMETRY_ARRIVAL_DEVICE = "~telemetry"
MAX_SCORED_PER_RECORD = 1000


class ScoredTelemetryRecord(BaseModel):
    """A batch of an edge agent's telemetry scores and alerts, as forwarded to the cloud: no raw reading."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["telemetry_scored"] = SCORED_TELEMETRY_KIND
    record_id: str = Field(description="made at the edge when the batch was scored (a UUID); the same on resends")
    site_id: str = Field(pattern=rf"^{ID_PATTERN}$")
    sequence: int = Field(ge=1, description="per site, from 1, in the order the agent scored its batches")
    created_at: datetime
    scored: list[TelemetryScored] = Field(max_length=MAX_SCORED_PER_RECORD)
    alerts: list[MaintenanceAlert] = Field(default_factory=list, max_length=MAX_SCORED_PER_RECORD)


class UplinkAnswer(BaseModel):
    """Ingest's answer to one uplink record."""

    record_id: str
    status: UplinkStatus
    sample_id: str | None = Field(default=None, description="the sample stored, when the picture was included")
