"""The edge agent's Prometheus metrics, on a registry of its own (one per app, so tests can build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.pictures = Counter(
            "edgeloop_edge_pictures_total",
            "Pictures received from devices, by outcome (accepted, redelivered, rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.answers = Counter(
            "edgeloop_edge_answers_total",
            "Answers sent to devices, by who answered (edge or cloud).",
            ["served_by"],
            registry=self.registry,
        )
        self.answer_latency = Histogram(
            "edgeloop_edge_answer_seconds",
            "From a picture's arrival to its answer's publication, by who answered.",
            ["served_by"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.joint = Counter(
            "edgeloop_edge_joint_total",
            "Hard examples offered to the deep cloud model, by outcome (cloud, timeout, cloud_error).",
            ["outcome"],
            registry=self.registry,
        )
        self.model_errors = Counter(
            "edgeloop_edge_model_errors_total",
            "Failed calls to the node group's model server (retried), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.uplink_records = Counter(
            "edgeloop_edge_uplink_records_total",
            "Uplink records ingest answered, by status (stored, duplicate, refused).",
            ["status"],
            registry=self.registry,
        )
        self.uplink_failures = Counter(
            "edgeloop_edge_uplink_failures_total",
            "Uplink attempts that failed and will be retried (the cloud unreachable or unavailable).",
            registry=self.registry,
        )
        self.uplink_dropped = Counter(
            "edgeloop_edge_uplink_dropped_total",
            "What the uplink queue let go at its bound: picture (still sent without it), record, hard_record, "
            "scored_telemetry (a record of scores).",
            ["what"],
            registry=self.registry,
        )
        self.uplink_queue_records = Gauge(
            "edgeloop_edge_uplink_queue_records", "Records waiting in the uplink queue.", registry=self.registry
        )
        self.uplink_queue_bytes = Gauge(
            "edgeloop_edge_uplink_queue_bytes", "Picture bytes waiting in the uplink queue.", registry=self.registry
        )
        self.cloud_link_up = Gauge(
            "edgeloop_edge_cloud_link_up", "1 while the last uplink request reached ingest.", registry=self.registry
        )
        self.mqtt_connected = Gauge(
            "edgeloop_edge_mqtt_connected", "1 while connected to the site's MQTT broker.", registry=self.registry
        )
        # The canary split (docs/edge.md, "Canary rollouts").
        self.canary_samples = Counter(
            "edgeloop_edge_canary_samples_total",
            "Pictures in the site's canary's share, by outcome (canary: the canary answered; canary_fallback: it "
            "failed and the node group's server answered).",
            ["outcome"],
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "edgeloop_edge_canary_weight",
            "Share of the site's pictures sent to its canary now (0: no canary).",
            registry=self.registry,
        )
        self.deployer_failures = Counter(
            "edgeloop_edge_deployer_failures_total",
            "Canary polls the deployer did not answer (unreachable, 5xx, not a canary).",
            registry=self.registry,
        )
        # Sensor telemetry (docs/telemetry.md, "Scoring at the edge").
        self.telemetry_readings = Counter(
            "edgeloop_edge_telemetry_readings_total",
            "Telemetry messages from devices, by outcome (accepted: in the site history; rejected).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("accepted", "rejected"):
            self.telemetry_readings.labels(outcome=outcome)
        self.telemetry_scored = Counter(
            "edgeloop_edge_telemetry_scored_total", "Readings scored by the failure model.", registry=self.registry
        )
        self.maintenance_alerts = Counter(
            "edgeloop_edge_maintenance_alerts_total", "Maintenance alerts sent to devices.", registry=self.registry
        )
