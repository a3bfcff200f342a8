"""Prometheus metrics of the trainer, in a registry of its own (one per app, so tests can build many).

Labels are bounded: run outcomes and request reasons are fixed sets; model names are not a label.
"""

from __future__ import annotations

from typing import get_args

from edgeloop_common.events import TrainingReason
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# A run ends succeeded or failed; "interrupted": the trainer stopped during it, and it is queued again.
RUN_OUTCOMES = ("succeeded", "failed", "interrupted")
# Training takes seconds (a head on cached features) to an hour (fine-tuning a backbone from scratch).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "edgeloop_trainer_requests_total",
            "Training requests recorded (not duplicates), by reason; requests that join a queued run count too.",
            ["reason"],
            registry=self.registry,
        )
        self.requests_ignored = Counter(
            "edgeloop_trainer_requests_ignored_total",
            "TrainingRequested events for a model this trainer does not train (the failure model: federated).",
            registry=self.registry,
        )
        self.runs = Counter(
            "edgeloop_trainer_runs_total",
            "Training runs finished, by outcome (succeeded, failed, interrupted: queued again if attempts remain).",
            ["outcome"],
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "edgeloop_trainer_run_duration_seconds",
            "From a run's start to its end (snapshot, training, evaluation, export, registration), by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.runs_in_progress = Gauge(
            "edgeloop_trainer_runs_in_progress", "Training runs executing now.", registry=self.registry
        )
        for reason in get_args(TrainingReason):
            self.requests.labels(reason=reason)
        for outcome in RUN_OUTCOMES:
            self.runs.labels(outcome=outcome)

    def run_finished(self, outcome: str, duration_s: float) -> None:
        self.runs.labels(outcome=outcome).inc()
        self.run_duration.labels(outcome=outcome).observe(duration_s)
