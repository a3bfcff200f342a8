"""One realistic instance of every event of the contract, for round trips and schema checks."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from edgeloop_common.events import (
    ALL_EVENTS,
    BlobRef,
    DeadLetter,
    DeploymentUpdated,
    DriftDetected,
    Event,
    ImageReceived,
    InferenceCompleted,
    MaintenanceAlert,
    ModelPromoted,
    ModelRegistered,
    SampleLabeled,
    TelemetryReceived,
    TelemetryScored,
    TrainingRequested,
)

AT = datetime(2025, 11, 22, 10, 30, 15, 123456, tzinfo=UTC)
DIGEST = hashlib.sha256(b"a photo of a cat").hexdigest()
BLOB = BlobRef(sha256=DIGEST, uri=f"file:///data/blobs/{DIGEST}", content_type="image/jpeg", size_bytes=20_480)


def image_received(device_id: str = "cam-1", *, sample_id: str = "s-0001") -> ImageReceived:
    return ImageReceived(
        sample_id=sample_id,
        device_id=device_id,
        site_id="site-a",
        received_at=AT,
        image=BLOB,
        format="jpeg",
        width=640,
        height=480,
        ingress="mqtt",
        mqtt_topic=f"dt/edgeloop/site-a/{device_id}/image",
    )


def telemetry_received(device_id: str = "cam-1", *, seq: int = 0) -> TelemetryReceived:
    return TelemetryReceived(
        device_id=device_id,
        site_id="site-a",
        received_at=AT,
        measured_at=AT,
        readings={"seq": seq, "temperature_c": 21.5, "door_open": False, "firmware": "1.2.0"},
        mqtt_topic=f"dt/edgeloop/site-a/{device_id}/telemetry",
        machine_event="maintenance" if seq == 7 else None,
    )


SAMPLE_EVENTS: dict[type[Event], Event] = {
    ImageReceived: image_received(),
    TelemetryReceived: telemetry_received(),
    TelemetryScored: TelemetryScored(
        device_id="pump-1",
        site_id="site-a",
        measured_at=AT,
        scored_at=AT,
        model_name="machine-failure",
        model_version=2,
        served_by="edge",
        failure_probability=0.83,
        threshold=0.4,
        alert=True,
        window_readings=30,
        features={"temperature_c_mean": 71.5, "vibration_mm_s_slope": 0.04},
    ),
    MaintenanceAlert: MaintenanceAlert(
        device_id="pump-1",
        site_id="site-a",
        measured_at=AT,
        raised_at=AT,
        model_name="machine-failure",
        model_version=2,
        served_by="cloud",
        failure_probability=0.83,
        threshold=0.4,
        horizon_readings=60,
    ),
    InferenceCompleted: InferenceCompleted(
        sample_id="s-0001",
        device_id="cam-1",
        site_id="site-a",
        image=BLOB,
        model_name="catdog",
        model_version=3,
        scores={"cat": 0.91, "dog": 0.09},
        top_label="cat",
        confidence=0.91,
        latency_ms=12.5,
        served_by="edge",
        hard_example=False,
        image_stats={"mean_brightness": 0.47},
        completed_at=AT,
    ),
    SampleLabeled: SampleLabeled(
        sample_id="s-0001",
        device_id="cam-1",
        site_id="site-a",
        image=BLOB,
        label="cat",
        labeled_by="alice",
        labeled_at=AT,
        predicted_label="dog",
    ),
    DriftDetected: DriftDetected(
        model_name="catdog",
        model_version=3,
        site_id="site-a",
        feature="mean_brightness",
        test="psi",
        statistic=0.31,
        threshold=0.2,
        window_size=200,
        detected_at=AT,
    ),
    TrainingRequested: TrainingRequested(
        model_name="catdog", reason="drift", requested_by="drift", detail="psi 0.31 > 0.2", requested_at=AT
    ),
    ModelRegistered: ModelRegistered(
        model_name="catdog",
        version=4,
        artifact_uri="file:///data/models/catdog/4",
        metrics={"accuracy": 0.83, "per_class": {"cat": 0.8, "dog": 0.86}},
        dataset_snapshot_id="ds-17",
        parent_version=3,
        registered_at=AT,
    ),
    ModelPromoted: ModelPromoted(
        model_name="catdog",
        version=4,
        alias="production",
        previous_version=3,
        node_group="site-a",
        reason="accuracy 0.83 > 0.79",
        promoted_by="registry",
        promoted_at=AT,
    ),
    DeploymentUpdated: DeploymentUpdated(
        model_name="catdog",
        node_group="site-a",
        desired_version=4,
        actual_version=3,
        phase="canary",
        reason="canary of version 4 watched against version 3",
        endpoint="http://edgeloop-model-catdog-site-a.edgeloop.svc:8501",
        canary_version=4,
        canary_weight=0.1,
        canary_endpoint="http://edgeloop-model-catdog-site-a-canary.edgeloop.svc:8501",
        canary_status="watching",
        updated_at=AT,
    ),
    DeadLetter: DeadLetter(
        reason="image is truncated",
        error_type="PermanentError",
        service="ingest",
        attempts=1,
        original_topic="dt/edgeloop/site-a/cam-1/image",
        original_key="cam-1",
        original_value_b64="/9j/4AAQ",
        original_headers={},
        original_size_bytes=6,
        mqtt_topic="dt/edgeloop/site-a/cam-1/image",
        device_id="cam-1",
        site_id="site-a",
        failed_at=AT,
    ),
}

assert set(SAMPLE_EVENTS) == set(ALL_EVENTS), "every event of the contract needs a sample"
