"""Prometheus metrics of the registry (bounded labels only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

VERSIONS_REGISTERED = Counter("edgeloop_registry_versions_registered_total", "Model versions registered.")
PROMOTIONS = Counter(
    "edgeloop_registry_promotions_total",
    "Promotion requests by outcome (promoted, refused, forced, unchanged, rolled_back).",
    ["outcome"],
)
OUTBOX_PENDING = Gauge("edgeloop_registry_outbox_pending", "Outbox events not yet published.")
OUTBOX_PUBLISHED = Counter(
    "edgeloop_registry_outbox_published_total", "Outbox events published to the bus.", ["event_type"]
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "edgeloop_registry_outbox_publish_failures_total", "Attempts to publish an outbox event that failed."
)
