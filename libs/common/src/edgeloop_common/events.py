"""The event contract: every event EdgeLoop services exchange, in one place.

Events are frozen pydantic v2 models. Each class names its CloudEvents type
and the Kafka topic it travels on; the version is part of both, so a breaking
change is a new class (``...V2``) on a new topic, never an edit of this one.

Transport attributes (event id, time, source, trace context) are not fields of
the body: the Kafka adapter carries them as CloudEvents binary-mode headers and
hands them to handlers in an :class:`EventContext`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeloop_common import topics

JsonScalar = str | int | float | bool | None


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event. Subclasses set ``event_type`` and ``topic``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    topic: ClassVar[str]

    def partition_key(self) -> str:
        """Kafka record key: per-device ordering where a device is involved."""
        device_id = getattr(self, "device_id", None)
        if device_id:
            return str(device_id)
        model_name = getattr(self, "model_name", None)
        return str(model_name) if model_name else ""


class BlobRef(BaseModel):
    """A reference to a stored blob. Images never travel inside events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    uri: str
    content_type: str
    size_bytes: int = Field(ge=0)


ImageFormat = Literal["jpeg", "png"]
# mqtt/http: a device's picture reached the cloud directly (a cloud-first site); edge: an edge agent answered it at
# the site and forwarded it through its uplink (the cloud gateway does not classify it again).
Ingress = Literal["mqtt", "http", "edge"]


class ImageReceived(Event):
    event_type: ClassVar[str] = "io.edgeloop.images.received.v1"
    topic: ClassVar[str] = topics.IMAGES_RECEIVED

    sample_id: str
    device_id: str
    site_id: str
    received_at: datetime
    image: BlobRef
    format: ImageFormat
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    ingress: Ingress
    mqtt_topic: str | None = None


MachineEvent = Literal["failure", "maintenance"]


class TelemetryReceived(Event):
    event_type: ClassVar[str] = "io.edgeloop.telemetry.received.v1"
    topic: ClassVar[str] = topics.TELEMETRY_RECEIVED

    device_id: str
    site_id: str
    received_at: datetime
    measured_at: datetime | None = None
    readings: dict[str, JsonScalar]
    mqtt_topic: str | None = None
    # What happened to the machine the sensor watches, reported with this reading (the label of the failure
    # model): "failure" — it broke down; "maintenance" — it was repaired or serviced (its wear starts again).
    machine_event: MachineEvent | None = None


ServedBy = Literal["edge", "cloud"]


class TelemetryScored(Event):
    """A device's latest window of readings, scored by a failure model (docs/telemetry.md).

    ``features`` are the window's features (``edgeloop_common.telemetry.features.FEATURE_NAMES``): what the drift
    service compares with the version's reference. No raw reading travels here.
    """

    event_type: ClassVar[str] = "io.edgeloop.telemetry.scored.v1"
    topic: ClassVar[str] = topics.TELEMETRY_SCORED

    device_id: str
    site_id: str
    measured_at: datetime
    scored_at: datetime = Field(default_factory=utc_now)
    model_name: str
    model_version: int
    served_by: ServedBy
    failure_probability: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)
    alert: bool
    window_readings: int = Field(gt=0)
    features: dict[str, float]


class MaintenanceAlert(Event):
    """A machine predicted to fail within ``horizon_readings`` readings: for the operator and the device."""

    event_type: ClassVar[str] = "io.edgeloop.maintenance.alert.v1"
    topic: ClassVar[str] = topics.MAINTENANCE_ALERTS

    device_id: str
    site_id: str
    measured_at: datetime
    raised_at: datetime = Field(default_factory=utc_now)
    model_name: str
    model_version: int
    served_by: ServedBy
    failure_probability: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)
    horizon_readings: int = Field(gt=0)


# Whether a picture shows anything to classify (edgeloop_common.images.assess_quality): "too_dark" (a camera at
# night), "too_bright" (blown out), "blank" (featureless). The model still answers; such a picture is never a
# hard example.
ImageQuality = Literal["ok", "too_dark", "too_bright", "blank"]


JointOutcome = Literal["cloud", "timeout", "cloud_error"]


class JointInference(BaseModel):
    """How joint inference went for one hard example: the edge's own answer, and the deep cloud model's, if any.

    ``outcome``: ``cloud`` — the cloud answered within the time budget and the device got the cloud's answer;
    ``timeout`` — no answer within the budget (the device got the edge's); ``cloud_error`` — the cloud refused or
    could not be reached (the device got the edge's). The event's own ``scores`` are what the device got.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    edge_model_name: str
    edge_model_version: int
    edge_scores: dict[str, float]
    edge_latency_ms: float = Field(ge=0.0)
    outcome: JointOutcome
    cloud_model_name: str | None = None
    cloud_model_version: int | None = None
    cloud_scores: dict[str, float] | None = None
    cloud_latency_ms: float | None = Field(default=None, ge=0.0)
    detail: str = ""


class InferenceCompleted(Event):
    event_type: ClassVar[str] = "io.edgeloop.inferences.completed.v1"
    topic: ClassVar[str] = topics.INFERENCES_COMPLETED

    sample_id: str
    device_id: str
    site_id: str
    image: BlobRef
    model_name: str
    model_version: int
    scores: dict[str, float]
    top_label: str
    confidence: float = Field(ge=0.0, le=1.0)
    latency_ms: float = Field(ge=0.0)
    served_by: ServedBy = "edge"
    hard_example: bool = False
    hard_example_reason: str | None = None
    # Image statistics the drift service compares against the training reference.
    image_stats: dict[str, float] = Field(default_factory=dict)
    quality: ImageQuality = Field(
        default="ok", description="whether the picture shows anything to classify; never a hard example unless ok"
    )
    # Set where an edge agent offered this hard example to the deep cloud model (docs/edge.md).
    joint: JointInference | None = None
    completed_at: datetime = Field(default_factory=utc_now)


class SampleLabeled(Event):
    event_type: ClassVar[str] = "io.edgeloop.samples.labeled.v1"
    topic: ClassVar[str] = topics.SAMPLES_LABELED

    sample_id: str
    device_id: str
    site_id: str
    image: BlobRef
    label: str
    labeled_by: str
    labeled_at: datetime = Field(default_factory=utc_now)
    predicted_label: str | None = None


class DriftDetected(Event):
    event_type: ClassVar[str] = "io.edgeloop.drift.detected.v1"
    topic: ClassVar[str] = topics.DRIFT_DETECTED

    model_name: str
    model_version: int
    site_id: str
    feature: str
    test: Literal["psi", "ks", "adwin"]
    statistic: float
    threshold: float
    window_size: int
    detected_at: datetime = Field(default_factory=utc_now)


TrainingReason = Literal["drift", "new_labels", "schedule", "manual"]


class TrainingRequested(Event):
    event_type: ClassVar[str] = "io.edgeloop.training.requested.v1"
    topic: ClassVar[str] = topics.TRAINING_REQUESTED

    model_name: str
    reason: TrainingReason
    requested_by: str
    detail: str = ""
    requested_at: datetime = Field(default_factory=utc_now)


class ModelRegistered(Event):
    event_type: ClassVar[str] = "io.edgeloop.models.registered.v1"
    topic: ClassVar[str] = topics.MODELS_REGISTERED

    model_name: str
    version: int
    artifact_uri: str
    metrics: dict[str, Any]
    dataset_snapshot_id: str | None = None
    parent_version: int | None = None
    registered_at: datetime = Field(default_factory=utc_now)


class ModelPromoted(Event):
    event_type: ClassVar[str] = "io.edgeloop.models.promoted.v1"
    topic: ClassVar[str] = topics.MODELS_PROMOTED

    model_name: str
    version: int
    alias: str
    previous_version: int | None = None
    node_group: str | None = None
    reason: str
    promoted_by: str
    promoted_at: datetime = Field(default_factory=utc_now)


DeploymentPhase = Literal["pending", "progressing", "ready", "failed", "rolled_back", "deleted", "canary"]
# A canary's stage (docs/deployer.md, "Canary rollouts"): its server coming up (no traffic yet), taking its share of
# the group's traffic while the deployer compares it with the stable version, passed (rolling out to the group)
# or failed (removed; the stable version keeps serving).
CanaryStatus = Literal["deploying", "watching", "passed", "failed"]


def in_canary_share(sample_id: str, weight: float) -> bool:
    """Whether a sample goes to the canary: the first 8 bytes of sha256(sample_id) as a fraction of 2**64, below
    ``weight``. Stable (a redelivery or a retry of a sample goes the same way), and the same in the gateway, the edge
    agents and the deployer, which attributes a sample served by the stable version to a failed canary answer."""
    if weight <= 0.0:
        return False
    share = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2**64
    return share < weight


class DeploymentUpdated(Event):
    event_type: ClassVar[str] = "io.edgeloop.deployments.updated.v1"
    topic: ClassVar[str] = topics.DEPLOYMENTS_UPDATED

    model_name: str
    node_group: str
    desired_version: int | None
    actual_version: int | None
    phase: DeploymentPhase
    reason: str = ""
    # TF Serving REST base URL of the node group's model server (its Service), where the site's edge agent, or the
    # gateway for a cloud-first site, asks for ``actual_version``; None where the target does not say.
    endpoint: str | None = None
    # Phase ``canary`` (and the ready / rolled_back that ends a canary): the candidate version, the share of the
    # group's traffic it takes while ``canary_status`` is ``watching``, and its own model server.
    canary_version: int | None = None
    canary_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    canary_endpoint: str | None = None
    canary_status: CanaryStatus | None = None
    updated_at: datetime = Field(default_factory=utc_now)

    def partition_key(self) -> str:
        """``<model>/<node group>``: the topic is compacted by key (``topics.KAFKA_TOPIC_CONFIGS``), so Kafka keeps
        the latest state of every deployment, and one deployment's updates stay in publish order."""
        return f"{self.model_name}/{self.node_group}"


class DeadLetter(Event):
    """A message that could not be handled, with everything needed to replay it."""

    event_type: ClassVar[str] = "io.edgeloop.deadletter.v1"
    topic: ClassVar[str] = topics.DEAD_LETTER

    reason: str
    error_type: str
    service: str
    attempts: int = Field(ge=0)
    original_topic: str
    original_key: str | None = None
    original_value_b64: str
    original_headers: dict[str, str] = Field(default_factory=dict)
    original_size_bytes: int = Field(ge=0)
    mqtt_topic: str | None = None
    device_id: str | None = None
    site_id: str | None = None
    failed_at: datetime = Field(default_factory=utc_now)


ALL_EVENTS: tuple[type[Event], ...] = (
    ImageReceived,
    TelemetryReceived,
    InferenceCompleted,
    SampleLabeled,
    DriftDetected,
    TrainingRequested,
    ModelRegistered,
    ModelPromoted,
    DeploymentUpdated,
    DeadLetter,
    TelemetryScored,
    MaintenanceAlert,
)

EVENTS_BY_TYPE: dict[str, type[Event]] = {cls.event_type: cls for cls in ALL_EVENTS}
EVENTS_BY_TOPIC: dict[str, type[Event]] = {cls.topic: cls for cls in ALL_EVENTS}
