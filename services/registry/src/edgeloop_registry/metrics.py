"""Prometheus metrics of the registry, in a registry of its own (one per app, so tests can build many).

Labels are bounded: outcomes and event types are fixed sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

PROMOTION_OUTCOMES = ("promoted", "refused", "forced", "unchanged", "rolled_back")


class RegistryMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.versions_registered = Counter(
            "edgeloop_registry_versions_registered_total", "Model versions registered.", registry=self.registry
        )
        self.promotions = Counter(
            "edgeloop_registry_promotions_total",
            "Promotion requests by outcome (promoted, refused, forced, unchanged, rolled_back).",
            ["outcome"],
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "edgeloop_registry_outbox_pending", "Outbox events not yet published.", registry=self.registry
        )
        self.outbox_published = Counter(
            "edgeloop_registry_outbox_published_total",
            "Outbox events published to the bus.",
            ["event_type"],
            registry=self.registry,
        )
        self.outbox_publish_failures = Counter(
            "edgeloop_registry_outbox_publish_failures_total",
            "Attempts to publish an outbox event that failed.",
            registry=self.registry,
        )
