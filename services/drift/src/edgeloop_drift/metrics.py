"""Prometheus metrics of the drift service, in a registry of its own (one per app).

Labels are bounded: models and features are few; sites get their own label
value up to ``metric_site_limit`` distinct ones, later sites share ``other``.
Model versions are not a label (they only grow).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

OTHER_SITE = "other"


class DriftMetrics:
    def __init__(self, *, site_limit: int = 20, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.site_limit = site_limit
        self._sites: set[str] = set()
        self.score = Gauge(
            "edgeloop_drift_score",
            "Latest drift statistic of a feature's live window against the model version's reference "
            "(psi: population stability index; ks: Kolmogorov-Smirnov D).",
            ["model", "site", "test", "feature"],
            registry=self.registry,
        )
        self.threshold = Gauge(
            "edgeloop_drift_threshold",
            "Threshold the drift statistic is compared with (score above it: drift).",
            ["model", "site", "test", "feature"],
            registry=self.registry,
        )
        self.accuracy = Gauge(
            "edgeloop_drift_accuracy",
            "ADWIN's estimate of the accuracy of labeled predictions of the model at the site.",
            ["model", "site"],
            registry=self.registry,
        )
        self.alarms = Counter(
            "edgeloop_drift_alarms_total",
            "DriftDetected events published, by test and feature (debounced repeats are not counted here).",
            ["model", "test", "feature"],
            registry=self.registry,
        )
        self.suppressed = Counter(
            "edgeloop_drift_alarms_debounced_total",
            "Drift found again within the debounce interval of an earlier alarm: no new event.",
            ["model", "test", "feature"],
            registry=self.registry,
        )
        self.training_requests = Counter(
            "edgeloop_drift_training_requests_total",
            "TrainingRequested(reason=drift) events published.",
            ["model"],
            registry=self.registry,
        )
        self.samples = Counter(
            "edgeloop_drift_samples_total",
            "Events taken into account, by kind (inference, label, telemetry).",
            ["kind"],
            registry=self.registry,
        )
        self.skipped_labels = Counter(
            "edgeloop_drift_labels_skipped_total",
            "SampleLabeled events not fed to ADWIN, by reason (no_prediction, unknown_model, older_version).",
            ["reason"],
            registry=self.registry,
        )
        self.checks = Counter(
            "edgeloop_drift_checks_total", "Comparisons of a full window with its reference.", registry=self.registry
        )

    def site_label(self, site_id: str) -> str:
        if site_id in self._sites:
            return site_id
        if len(self._sites) < self.site_limit:
            self._sites.add(site_id)
            return site_id
        return OTHER_SITE
