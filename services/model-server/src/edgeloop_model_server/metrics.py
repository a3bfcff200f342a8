"""Prometheus metrics of the model server, in a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.request_duration = Histogram(
            "edgeloop_model_server_request_duration_seconds",
            "Time to answer one request, by API (rest, grpc), method and outcome code.",
            ["api", "method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "edgeloop_model_server_inference_duration_seconds",
            "Time spent in the model call itself (in the inference thread pool).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests_in_flight = Gauge(
            "edgeloop_model_server_requests_in_flight",
            "Requests being answered now.",
            registry=self.registry,
        )
        self.version_loads = Counter(
            "edgeloop_model_server_version_loads_total",
            "Version loads, by outcome (available, failed).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.load_duration = Histogram(
            "edgeloop_model_server_version_load_duration_seconds",
            "Time to load and warm up a version.",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=self.registry,
        )
        self.available_versions = Gauge(
            "edgeloop_model_server_available_versions",
            "Versions currently AVAILABLE, per model.",
            ["model"],
            registry=self.registry,
        )
