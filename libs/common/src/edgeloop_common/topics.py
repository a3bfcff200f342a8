"""Kafka topic names and MQTT topic templates: the channels of the contract.

Kafka topics carry the event version in their name (``edgeloop.<name>.v1``).
MQTT topics follow docs/architecture.md: ``dt/`` for device telemetry and data, ``cmd/``
for commands to a device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IMAGES_RECEIVED = "edgeloop.images.received.v1"
TELEMETRY_RECEIVED = "edgeloop.telemetry.received.v1"
INFERENCES_COMPLETED = "edgeloop.inferences.completed.v1"
SAMPLES_LABELED = "edgeloop.samples.labeled.v1"
DRIFT_DETECTED = "edgeloop.drift.detected.v1"
TRAINING_REQUESTED = "edgeloop.training.requested.v1"
MODELS_REGISTERED = "edgeloop.models.registered.v1"
MODELS_PROMOTED = "edgeloop.models.promoted.v1"
DEPLOYMENTS_UPDATED = "edgeloop.deployments.updated.v1"
DEAD_LETTER = "edgeloop.deadletter.v1"
# Sensor telemetry scored by a failure model, and the alerts it raised (docs/telemetry.md).
TELEMETRY_SCORED = "edgeloop.telemetry.scored.v1"
MAINTENANCE_ALERTS = "edgeloop.maintenance.alerts.v1"

ALL_KAFKA_TOPICS: tuple[str, ...] = (
    IMAGES_RECEIVED,
    TELEMETRY_RECEIVED,
    INFERENCES_COMPLETED,
    SAMPLES_LABELED,
    DRIFT_DETECTED,
    TRAINING_REQUESTED,
    MODELS_REGISTERED,
    MODELS_PROMOTED,
    DEPLOYMENTS_UPDATED,
    DEAD_LETTER,
    TELEMETRY_SCORED,
    MAINTENANCE_ALERTS,
)

# Topic configs other than the broker's defaults, applied where topics are created (the bus, `edgeloop infra up`).
# deployments.updated is compacted: Kafka keeps at least the latest record of each key (`<model>/<node group>`)
# for ever, so a gateway replica that replays it from the beginning rebuilds the current routes (docs/bus.md).
KAFKA_TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    DEPLOYMENTS_UPDATED: {"cleanup.policy": "compact"},
}

# MQTT topic templates. {site} and {device} are single topic levels.
MQTT_IMAGE = "dt/edgeloop/{site}/{device}/image"
MQTT_TELEMETRY = "dt/edgeloop/{site}/{device}/telemetry"
MQTT_RESULT = "dt/edgeloop/{site}/{device}/result"
MQTT_CAPTURE = "cmd/edgeloop/{site}/{device}/capture"
# A maintenance alert for a sensor device (the machine it watches is predicted to fail within the horizon).
MQTT_ALERT = "dt/edgeloop/{site}/{device}/alert"

# Subscriptions of the ingest bridge.
MQTT_IMAGE_SUBSCRIPTION = "dt/edgeloop/+/+/image"
MQTT_TELEMETRY_SUBSCRIPTION = "dt/edgeloop/+/+/telemetry"

# An id is what may stand in one MQTT topic level and in a file name.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
_DEVICE_TOPIC = re.compile(
    rf"^dt/edgeloop/(?P<site>{ID_PATTERN})/(?P<device>{ID_PATTERN})/(?P<kind>image|telemetry|result)$"
)


@dataclass(frozen=True)
class DeviceTopic:
    site_id: str
    device_id: str
    kind: str


def parse_device_topic(topic: str) -> DeviceTopic | None:
    """Split ``dt/edgeloop/{site}/{device}/{kind}``; None when it does not match."""
    match = _DEVICE_TOPIC.match(topic)
    if match is None:
        return None
    return DeviceTopic(site_id=match["site"], device_id=match["device"], kind=match["kind"])


def mqtt_topic(template: str, *, site: str, device: str) -> str:
    return template.format(site=site, device=device)
