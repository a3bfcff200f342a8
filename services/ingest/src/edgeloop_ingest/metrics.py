"""Prometheus metrics of the ingest service, in a registry of its own (one per app, so tests can build many).

No device-id labels: their number is unbounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The one metric left at module level: adapters/mqtt.py (not changed here) sets it directly. It belongs to no
# registry of its own; each app's IngestMetrics exposes it. It moves onto IngestMetrics when that adapter takes one.
MQTT_CONNECTED = Gauge(
    "edgeloop_bridge_mqtt_connected", "1 while the bridge is connected to the MQTT broker.", registry=None
)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.bridge_messages = Counter(
            "edgeloop_bridge_messages_total",
            "Device messages acknowledged by the bridge, by kind (image, telemetry, unknown) and outcome: "
            "published (Kafka acknowledged the event), buffered (durable in the disk buffer), "
            "dead_lettered (rejected; its DeadLetter is durable).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "edgeloop_ingest_rejections_total",
            "Rejected device messages and uploads, by ingress (mqtt, http), kind and reason code.",
            ["ingress", "kind", "reason"],
            registry=self.registry,
        )
        self.http_uploads = Counter(
            "edgeloop_ingest_http_uploads_total",
            "HTTP sample uploads by outcome (accepted, rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.buffered = Gauge(
            "edgeloop_bridge_buffered_messages", "Events in the disk buffer, waiting for Kafka.", registry=self.registry
        )
        self.in_flight = Gauge(
            "edgeloop_bridge_in_flight_messages",
            "Device messages received and not yet acknowledged.",
            registry=self.registry,
        )
        self.bridge_redeliveries = Counter(
            "edgeloop_bridge_redeliveries_total",
            "Redelivered MQTT messages (DUP flag) matched to a stored sample: its event is re-published, "
            "no new sample.",
            registry=self.registry,
        )
        self.drained = Counter(
            "edgeloop_bridge_drained_total",
            "Events re-published from the disk buffer to Kafka.",
            registry=self.registry,
        )
        self.publish_duration = Histogram(
            "edgeloop_ingest_publish_duration_seconds",
            "From handing an event to the bus until Kafka acknowledged it.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.prepare_duration = Histogram(
            "edgeloop_ingest_prepare_duration_seconds",
            "Validating, storing and recording one batch of device messages.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.predictions = Counter(
            "edgeloop_ingest_predictions_total",
            "InferenceCompleted events handled, by outcome: stored, stale (the sample already holds a newer "
            "prediction), unknown_sample (no such sample here: dead-lettered), picture_at_edge (an edge record "
            "forwarded without its picture: no sample here, nothing to label).",
            ["outcome"],
            registry=self.registry,
        )
        self.labels = Counter(
            "edgeloop_ingest_labels_total",
            "Labels stored, each announced by a SampleLabeled event, by request: single (PUT) or batch "
            "(POST /v1/labels).",
            ["request"],
            registry=self.registry,
        )
        self.uplink_records = Counter(
            "edgeloop_ingest_uplink_records_total",
            "Uplink records from edge agents (POST /v1/uplink), by outcome: stored, duplicate (taken before: "
            "nothing stored or published again), refused (4xx with the reason), unavailable (503: the bus or "
            "the sample store could not take it now; the agent retries).",
            ["outcome"],
            registry=self.registry,
        )
        self.uplink_out_of_order = Counter(
            "edgeloop_ingest_uplink_out_of_order_total",
            "Uplink records stored with a lower sequence than their device's highest seen (stored all the same).",
            registry=self.registry,
        )
        self.registry.register(MQTT_CONNECTED)
