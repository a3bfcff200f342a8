"""JSON messages exchanged with devices over MQTT (the device side of the contract).

Images travel as raw JPEG/PNG bytes on ``dt/edgeloop/{site}/{device}/image``;
these models describe the JSON channels. ``docs/asyncapi.yaml`` is generated
from them, the gateway builds its results with :class:`DeviceResult`, and the
simulator reads results with it.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from edgeloop_common.events import ImageQuality, JsonScalar, MachineEvent
from edgeloop_common.telemetry.messages import MAX_SAMPLES


class DeviceTelemetry(BaseModel):
    """JSON a device publishes on its telemetry topic: named scalar readings, optionally when it measured them.
    (A flat object of readings is taken too; docs/telemetry.md.)"""

    model_config = ConfigDict(extra="forbid")

    readings: dict[str, JsonScalar] = Field(description="reading name -> value (number, string or boolean)")
    measured_at: datetime | None = Field(default=None, description="when the device measured; default: received time")
    machine_event: MachineEvent | None = Field(
        default=None, description="the machine broke down (failure) or was serviced (maintenance) with this reading"
    )


class DeviceTelemetrySample(DeviceTelemetry):
    """One sample of a batch: its time is required."""

    measured_at: datetime = Field(description="when the device measured")  # type: ignore[assignment]


class DeviceTelemetryBatch(BaseModel):
    """Readings a device collected before sending, oldest first, as one message: taken or refused whole (a bad
    sample refuses the message, its index in the dead letter's reason)."""

    model_config = ConfigDict(extra="forbid")

    samples: list[DeviceTelemetrySample] = Field(min_length=1, max_length=MAX_SAMPLES)


class DeviceResult(BaseModel):
    """JSON EdgeLoop sends back to a device after classifying its image (the gist of InferenceCompleted)."""

    model_config = ConfigDict(extra="allow")

    sample_id: str | None = Field(default=None, description="the stored sample; null for POST /v1/classify")
    site_id: str | None = None
    device_id: str | None = None
    image_sha256: str | None = Field(default=None, description="sha256 of the image bytes the device sent")
    model_name: str | None = None
    model_version: int | None = None
    top_label: str
    confidence: float = Field(ge=0.0, le=1.0)
    scores: dict[str, float] = Field(default_factory=dict, description="class name -> probability; they sum to 1")
    latency_ms: float | None = Field(default=None, description="time spent in the gateway")
    served_by: str | None = Field(default=None, description="edge or cloud")
    hard_example: bool = False
    quality: ImageQuality = Field(
        default="ok",
        description="whether the picture shows anything to classify: ok, too_dark, too_bright or blank "
        "(the scores are still given, but mean little when it is not ok)",
    )
    completed_at: datetime | None = None


class CaptureCommand(BaseModel):
    """JSON asking a device to take a picture now; it answers by publishing on its image topic."""

    model_config = ConfigDict(extra="allow")

    request_id: str | None = Field(default=None, description="echoed in the logs of the image it leads to")


DEVICE_MODELS: tuple[type[BaseModel], ...] = (DeviceTelemetry, DeviceTelemetryBatch, DeviceResult, CaptureCommand)
