"""Prometheus metrics of the deployer (labels bounded: targets, outcomes, configured node groups, models)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DeployerMetrics:
    """One registry per app, so several apps in one process (tests, standalone) do not collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rollouts = Counter(
            "edgeloop_deployer_rollouts_total",
            "Finished rollouts by target and outcome (ready, failed, rolled_back).",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.rollout_duration = Histogram(
            "edgeloop_deployer_rollout_duration_seconds",
            "From the request (promotion, HTTP) until the rollout was ready, failed or rolled back.",
            ["target", "outcome"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.serving_version = Gauge(
            "edgeloop_deployer_serving_version",
            "The model version each node group serves (-1: none).",
            ["model", "node_group"],
            registry=self.registry,
        )

    def rollout_finished(self, target: str, outcome: str, duration_s: float) -> None:
        self.rollouts.labels(target, outcome).inc()
        self.rollout_duration.labels(target, outcome).observe(duration_s)

    def version_serving(self, model_name: str, node_group: str, version: int | None) -> None:
        self.serving_version.labels(model_name, node_group).set(-1 if version is None else version)
