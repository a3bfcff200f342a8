"""The gateway's Prometheus metrics, on a registry of its own (one per app, so tests can build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

INFERENCE_OUTCOMES = ("ok", "invalid_input", "model_unavailable", "blob_unavailable", "error")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.inference_duration = Histogram(
            "edgeloop_inference_duration_seconds",
            "Time from taking an image to having its scores (fetch, checks, batching wait, model call).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_call_duration = Histogram(
            "edgeloop_model_call_duration_seconds",
            "Duration of one (batched) call to the model server.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgeloop_inference_batch_size",
            "Images per model server call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inferences = Counter(
            "edgeloop_inferences_total",
            "Classifications by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.device_results = Counter(
            "edgeloop_device_results_total",
            "Results sent to devices over MQTT, by outcome (acked, unacknowledged: still queued for the broker).",
            ["outcome"],
            registry=self.registry,
        )
        self.images_skipped = Counter(
            "edgeloop_images_skipped_total",
            "ImageReceived events not classified here, by reason (answered_at_edge: an edge agent already answered).",
            ["reason"],
            registry=self.registry,
        )
        self.images_skipped.labels(reason="answered_at_edge")
        # Sensor telemetry (docs/telemetry.md, "Scoring").
        self.telemetry_readings = Counter(
            "edgeloop_telemetry_readings_total",
            "Readings taken, by outcome: queued (scored), window_filling (the device's window is not full yet), "
            "scored_at_edge (its site's edge agent scores it).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("queued", "window_filling", "scored_at_edge"):
            self.telemetry_readings.labels(outcome=outcome)
        self.telemetry_scored = Counter(
            "edgeloop_telemetry_scored_total", "Readings scored by the failure model.", registry=self.registry
        )
        self.maintenance_alerts = Counter(
            "edgeloop_maintenance_alerts_total", "Maintenance alerts raised.", registry=self.registry
        )
        self.telemetry_scoring_duration = Histogram(
            "edgeloop_telemetry_scoring_seconds",
            "From a reading's window queued for scoring to its probability (batching wait and the model call).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for outcome in INFERENCE_OUTCOMES:
            self.inferences.labels(outcome=outcome)
