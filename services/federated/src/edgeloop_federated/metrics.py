"""Prometheus metrics of the federated service, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class FederatedMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.trainings = Counter(
            "edgeloop_federated_trainings_total",
            "Federated trainings finished, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.training_seconds = Histogram(
            "edgeloop_federated_training_duration_seconds",
            "Wall time of a federated training.",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 3600),
            registry=self.registry,
        )
        self.round_seconds = Histogram(
            "edgeloop_federated_round_duration_seconds",
            "Wall time of one round (fit and evaluation).",
            ["strategy"],
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.round_clients = Counter(
            "edgeloop_federated_round_clients_total",
            "Site answers to rounds, by outcome (answered or failed).",
            ["outcome"],
            registry=self.registry,
        )

    def training_finished(self, outcome: str, duration_s: float) -> None:
        self.trainings.labels(outcome).inc()
        self.training_seconds.observe(duration_s)

    def round_finished(self, strategy: str, duration_s: float, clients: int, failures: int) -> None:
        self.round_seconds.labels(strategy).observe(duration_s)
        self.round_clients.labels("answered").inc(clients)
        self.round_clients.labels("failed").inc(failures)
