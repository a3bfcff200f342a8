"""The drift service's logic: windows per (model, version, site), ADWIN per (model, site), alarms and policy.

State is in memory. A restart starts with empty windows, which refill from the
events that follow (``window_size`` of them before the first check), and with
an empty alarm history; the registry's references are fetched again.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from edgeloop_common.events import (
    DriftDetected,
    InferenceCompleted,
    SampleLabeled,
    TelemetryScored,
    TrainingRequested,
    utc_now,
)
from edgeloop_common.reference_stats import ReferenceStats, sample_features

from edgeloop_drift.concept import AccuracyDrop, AccuracyMonitor
from edgeloop_drift.metrics import DriftMetrics
from edgeloop_drift.windows import FeatureComparison, PreparedReference, StreamWindow, WindowConfig

log = logging.getLogger(__name__)

SERVICE_NAME = "drift"
ACCURACY_FEATURE = "accuracy"
DriftTest = Literal["psi", "ks", "adwin"]


class ReferenceLookup(Protocol):
    """Where a model version's training-time reference comes from (the registry)."""

    async def reference_stats(self, model_name: str, version: int) -> ReferenceStats | None:
        """The version's reference, or None (with the reason logged) when there is none to be had now."""


@dataclass(frozen=True)
class DriftPolicy:
    debounce: timedelta = timedelta(seconds=300)
    request_training: bool = True
    reference_retry: timedelta = timedelta(seconds=60)
    adwin_delta: float = 0.005
    adwin_clock: int = 4
    alarm_history: int = 500
    max_streams: int = 1000
    prediction_memory: int = 100_000


@dataclass(frozen=True)
class TelemetryDriftConfig:
    """Drift on sensor features: its own windows (docs/telemetry.md, "Drift on readings")."""

    window: WindowConfig = field(default_factory=lambda: WindowConfig(window_size=200, check_every=25))
    sample_every: int = 30  # WINDOW_READINGS: a device's windows that do not overlap
    max_devices: int = 100_000


@dataclass(frozen=True)
class StreamKey:
    model_name: str
    model_version: int
    site_id: str


@dataclass(frozen=True)
class Alarm:
    """A drift found and published: the evidence of DriftDetected."""

    model_name: str
    model_version: int
    site_id: str
    test: DriftTest
    feature: str
    statistic: float
    threshold: float
    window_size: int
    detected_at: datetime
    reference_size: int | None = None
    p_value: float | None = None
    detail: dict[str, float] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        evidence: dict[str, Any] = {
            "test": self.test,
            "feature": self.feature,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "window_size": self.window_size,
        }
        if self.reference_size is not None:
            evidence["reference_size"] = self.reference_size
        if self.p_value is not None:
            evidence["p_value"] = self.p_value
        evidence.update(self.detail)
        return evidence

    def to_event(self) -> DriftDetected:
        return DriftDetected(
            model_name=self.model_name,
            model_version=self.model_version,
            site_id=self.site_id,
            feature=self.feature,
            test=self.test,
            statistic=self.statistic,
            threshold=self.threshold,
            window_size=self.window_size,
            detected_at=self.detected_at,
        )


@dataclass(frozen=True)
class Reaction:
    """What the service asks to publish after one event: its alarms and, by policy, a training request."""

    drift: tuple[DriftDetected, ...] = ()
    training: TrainingRequested | None = None

    def events(self) -> list[DriftDetected | TrainingRequested]:
        return [*self.drift, *([self.training] if self.training else [])]


@dataclass
class Stream:
    key: StreamKey
    window: StreamWindow
    reference: PreparedReference | None = None
    last_check_at: datetime | None = None
    last: dict[tuple[str, str], FeatureComparison] = field(default_factory=dict)


class DriftService:
    def __init__(
        self,
        config: WindowConfig,
        references: ReferenceLookup,
        *,
        policy: DriftPolicy | None = None,
        metrics: DriftMetrics | None = None,
        clock: Callable[[], datetime] = utc_now,
        telemetry: TelemetryDriftConfig | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry or TelemetryDriftConfig()
        self._telemetry_references: dict[tuple[str, int, str], PreparedReference] = {}
        self._telemetry_seen: dict[tuple[str, str, str], int] = {}
        self.references = references
        self.policy = policy or DriftPolicy()
        self.metrics = metrics or DriftMetrics()
        self.clock = clock
        self.streams: OrderedDict[StreamKey, Stream] = OrderedDict()
        self.monitors: dict[tuple[str, str], AccuracyMonitor] = {}
        self.alarms: deque[tuple[Alarm, bool]] = deque(maxlen=self.policy.alarm_history)
        self._registry_references: dict[tuple[str, int], PreparedReference] = {}
        self._lookups: dict[tuple[str, int], datetime] = {}
        self._predictions: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._latest_for_site: dict[str, tuple[str, int]] = {}
        self._last_alarm: dict[tuple[str, str, str, str], datetime] = {}
        self._last_training: dict[tuple[str, str], datetime] = {}
        self._inferences_counted = self.metrics.samples.labels("inference")
        self._labels_counted = self.metrics.samples.labels("label")
        self._telemetry_counted = self.metrics.samples.labels("telemetry")

    # --- InferenceCompleted: feature windows -------------------------------------------------------------

    async def observe_inference(self, event: InferenceCompleted) -> Reaction:
        self._inferences_counted.inc()
        self._remember_prediction(event)
        stream = self._stream(StreamKey(event.model_name, event.model_version, event.site_id))
        await self._refresh_reference(stream)
        stream.window.add(sample_features(event.scores, event.confidence, event.image_stats))
        if stream.reference is None and stream.window.full:
            self._adopt_first_window(stream)
        if stream.reference is None or not stream.window.check_due():
            return Reaction()
        return self._react(stream.key, self._check(stream))

    def _stream(self, key: StreamKey) -> Stream:
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = Stream(key, StreamWindow(self.config))
            while len(self.streams) > self.policy.max_streams:
                evicted, _ = self.streams.popitem(last=False)
                log.info("dropping the idlest drift window %s (max_streams reached)", evicted)
        self.streams.move_to_end(key)
        return stream

    async def _refresh_reference(self, stream: Stream) -> None:
        """Use the registry's reference where there is one; ask again, now and then, while there is none."""
        if stream.reference is not None and stream.reference.source == "registry":
            return
        version = (stream.key.model_name, stream.key.model_version)
        prepared = self._registry_references.get(version)
        if prepared is None and self._lookup_due(version):
            self._lookups[version] = self.clock()
            stats = await self.references.reference_stats(*version)
            if stats is not None:
                prepared = PreparedReference.build(stats.features, self.config, source="registry", size=stats.n)
                self._registry_references[version] = prepared
                log.info(
                    "reference of %s:%d from the registry: %d samples, features %s",
                    *version,
                    stats.n,
                    ", ".join(sorted(prepared.features)) or "none testable",
                )
        if prepared is not None:
            if stream.reference is not None:
                log.info("%s: the registry's reference replaces the first-window one", stream.key)
            stream.reference = prepared

    def _lookup_due(self, version: tuple[str, int]) -> bool:
        asked = self._lookups.get(version)
        return asked is None or self.clock() - asked >= self.policy.reference_retry

    def _adopt_first_window(self, stream: Stream) -> None:
        stream.reference = PreparedReference.build(
            stream.window.snapshot(), stream.window.config, source="first_window", size=stream.window.fill
        )
        stream.window.since_check = 0
        log.warning(
            "no registry reference for %s:%d: the first full window of site %s (%d samples) becomes its reference",
            stream.key.model_name,
            stream.key.model_version,
            stream.key.site_id,
            stream.window.fill,
        )

    def _check(self, stream: Stream) -> list[Alarm]:
        assert stream.reference is not None
        comparisons = stream.window.compare(stream.reference)
        now = self.clock()
        stream.last_check_at = now
        self.metrics.checks.inc()
        site = self.metrics.site_label(stream.key.site_id)
        alarms: list[Alarm] = []
        for comparison in comparisons:
            stream.last[(comparison.feature, comparison.test)] = comparison
            labels = (stream.key.model_name, site, comparison.test, comparison.feature)
            self.metrics.score.labels(*labels).set(comparison.statistic)
            self.metrics.threshold.labels(*labels).set(comparison.threshold)
            if comparison.drifted:
                alarms.append(_alarm_of(stream.key, comparison, now))
        return alarms

    # --- TelemetryScored: windows of sensor features (docs/telemetry.md, "Drift on readings") -------------------

    async def observe_telemetry(self, event: TelemetryScored) -> Reaction:
        """One scored window of a device's readings. Every ``sample_every``-th of a device enters the site's drift
        window: consecutive windows of a device share all but one reading, so only windows that do not overlap
        are (nearly) independent samples, which PSI and KS assume."""
        self._telemetry_counted.inc()
        device = (event.model_name, event.site_id, event.device_id)
        seen = self._telemetry_seen.get(device, 0)
        self._telemetry_seen[device] = seen + 1
        if seen % self.telemetry.sample_every:
            return Reaction()
        while len(self._telemetry_seen) > self.telemetry.max_devices:
            del self._telemetry_seen[next(iter(self._telemetry_seen))]
        key = StreamKey(event.model_name, event.model_version, event.site_id)
        stream = self.streams.get(key)
        if stream is None or stream.window.config is not self.telemetry.window:
            stream = self.streams[key] = Stream(key, StreamWindow(self.telemetry.window))
            while len(self.streams) > self.policy.max_streams:
                evicted, _ = self.streams.popitem(last=False)
                log.info("dropping the idlest drift window %s (max_streams reached)", evicted)
        self.streams.move_to_end(key)
        await self._refresh_telemetry_reference(stream)
        stream.window.add({name: value for name, value in event.features.items() if math.isfinite(value)})
        if stream.reference is None and stream.window.full:
            self._adopt_first_window(stream)
        if stream.reference is None or not stream.window.check_due():
            return Reaction()
        return self._react(stream.key, self._check(stream))

    async def _refresh_telemetry_reference(self, stream: Stream) -> None:
        """The site's own reference of the version where the registry has one (``reference_stats.sites``), else
        the version's pooled one, else (as for images) the site's first full window."""
        if stream.reference is not None and stream.reference.source == "registry":
            return
        key = stream.key
        version = (key.model_name, key.model_version)
        cached = self._telemetry_references.get((*version, key.site_id))
        if cached is None and self._lookup_due(version):
            self._lookups[version] = self.clock()
            stats = await self.references.reference_stats(*version)
            if stats is not None:
                for site, own in stats.sites.items():
                    self._telemetry_references[(*version, site)] = PreparedReference.build(
                        own.features, self.telemetry.window, source="registry", size=own.n
                    )
                self._telemetry_references[(*version, "")] = PreparedReference.build(
                    stats.features, self.telemetry.window, source="registry", size=stats.n
                )
                log.info("telemetry reference of %s:%d: pooled, and own for sites %s", *version, sorted(stats.sites))
            cached = self._telemetry_references.get((*version, key.site_id))
        if cached is None:
            cached = self._telemetry_references.get((*version, ""))
        if cached is not None:
            stream.reference = cached

    # --- SampleLabeled: ADWIN on correctness ---------------------------------------------------------------

    def observe_label(self, event: SampleLabeled) -> Reaction:
        self._labels_counted.inc()
        if event.predicted_label is None:
            return self._skip_label("no_prediction", event)
        attributed = self._predictions.get(event.sample_id) or self._latest_for_site.get(event.site_id)
        if attributed is None:
            return self._skip_label("unknown_model", event)
        model_name, version = attributed
        monitor = self.monitors.get((model_name, event.site_id))
        if monitor is not None and version < monitor.model_version:
            return self._skip_label("older_version", event)
        if monitor is None or version > monitor.model_version:
            monitor = AccuracyMonitor(version, delta=self.policy.adwin_delta, clock=self.policy.adwin_clock)
            self.monitors[(model_name, event.site_id)] = monitor
        drop = monitor.add(event.label == event.predicted_label)
        self.metrics.accuracy.labels(model_name, self.metrics.site_label(event.site_id)).set(monitor.accuracy)
        if drop is None:
            return Reaction()
        key = StreamKey(model_name, version, event.site_id)
        return self._react(key, [self._accuracy_alarm(key, drop)])

    def _skip_label(self, reason: str, event: SampleLabeled) -> Reaction:
        self.metrics.skipped_labels.labels(reason).inc()
        log.debug("label of sample %s not fed to ADWIN: %s", event.sample_id, reason)
        return Reaction()

    def _accuracy_alarm(self, key: StreamKey, drop: AccuracyDrop) -> Alarm:
        return Alarm(
            model_name=key.model_name,
            model_version=key.model_version,
            site_id=key.site_id,
            test="adwin",
            feature=ACCURACY_FEATURE,
            statistic=drop.drop,
            threshold=self.policy.adwin_delta,
            window_size=drop.window_size,
            detected_at=self.clock(),
            detail={"accuracy_before": drop.accuracy_before, "accuracy_after": drop.accuracy_after},
        )

    def _remember_prediction(self, event: InferenceCompleted) -> None:
        attributed = (event.model_name, event.model_version)
        self._latest_for_site[event.site_id] = attributed
        if self.policy.prediction_memory == 0:
            return
        self._predictions[event.sample_id] = attributed
        self._predictions.move_to_end(event.sample_id)
        while len(self._predictions) > self.policy.prediction_memory:
            self._predictions.popitem(last=False)

    # --- alarms: debounce and policy -----------------------------------------------------------------------

    def _react(self, key: StreamKey, found: list[Alarm]) -> Reaction:
        fresh = [alarm for alarm in found if self._not_debounced(alarm)]
        if not fresh:
            return Reaction()
        training = self._training_request(key, fresh)
        for alarm in fresh:
            self.alarms.append((alarm, training is not None))
            self.metrics.alarms.labels(alarm.model_name, alarm.test, alarm.feature).inc()
            log.warning(
                "drift on %s:%d at %s: %s %s = %.4g > %.4g (window %d)",
                alarm.model_name,
                alarm.model_version,
                alarm.site_id,
                alarm.test,
                alarm.feature,
                alarm.statistic,
                alarm.threshold,
                alarm.window_size,
            )
        return Reaction(drift=tuple(alarm.to_event() for alarm in fresh), training=training)

    def _not_debounced(self, alarm: Alarm) -> bool:
        key = (alarm.model_name, alarm.site_id, alarm.test, alarm.feature)
        last = self._last_alarm.get(key)
        if last is not None and alarm.detected_at - last < self.policy.debounce:
            self.metrics.suppressed.labels(alarm.model_name, alarm.test, alarm.feature).inc()
            return False
        self._last_alarm[key] = alarm.detected_at
        return True

    def _training_request(self, key: StreamKey, alarms: list[Alarm]) -> TrainingRequested | None:
        if not self.policy.request_training:
            return None
        now = self.clock()
        last = self._last_training.get((key.model_name, key.site_id))
        if last is not None and now - last < self.policy.debounce:
            return None
        self._last_training[(key.model_name, key.site_id)] = now
        self.metrics.training_requests.labels(key.model_name).inc()
        detail = {
            "model_version": key.model_version,
            "site_id": key.site_id,
            "evidence": [alarm.evidence() for alarm in alarms],
        }
        return TrainingRequested(
            model_name=key.model_name,
            reason="drift",
            requested_by=SERVICE_NAME,
            detail=json.dumps(detail, separators=(",", ":")),
            requested_at=now,
        )

    # --- the console's view --------------------------------------------------------------------------------

    def snapshot(self, *, model_name: str | None = None, site_id: str | None = None) -> dict[str, Any]:
        def wanted(name: str, site: str) -> bool:
            return (model_name is None or name == model_name) and (site_id is None or site == site_id)

        return {
            "settings": {
                "window_size": self.config.window_size,
                "check_every": self.config.check_every,
                "psi_threshold": self.config.psi_threshold,
                "ks_alpha": self.config.ks_alpha,
                "adwin_delta": self.policy.adwin_delta,
                "debounce_s": self.policy.debounce.total_seconds(),
                "request_training": self.policy.request_training,
            },
            "streams": [
                _stream_view(stream)
                for key, stream in reversed(self.streams.items())
                if wanted(key.model_name, key.site_id)
            ],
            "accuracy": [
                {
                    "model_name": name,
                    "site_id": site,
                    "model_version": monitor.model_version,
                    "labels_seen": monitor.labels_seen,
                    "accuracy_estimate": monitor.accuracy,
                    "accuracy_overall": monitor.correct_seen / monitor.labels_seen if monitor.labels_seen else None,
                    "window_size": monitor.window_size,
                    "drops_detected": monitor.drops_seen,
                }
                for (name, site), monitor in self.monitors.items()
                if wanted(name, site)
            ],
            "alarms": [
                {
                    "model_name": alarm.model_name,
                    "model_version": alarm.model_version,
                    "site_id": alarm.site_id,
                    **alarm.evidence(),
                    "detected_at": alarm.detected_at,
                    "training_requested": requested,
                }
                for alarm, requested in reversed(self.alarms)
                if wanted(alarm.model_name, alarm.site_id)
            ],
        }


def _alarm_of(key: StreamKey, comparison: FeatureComparison, now: datetime) -> Alarm:
    return Alarm(
        model_name=key.model_name,
        model_version=key.model_version,
        site_id=key.site_id,
        test=comparison.test,
        feature=comparison.feature,
        statistic=comparison.statistic,
        threshold=comparison.threshold,
        window_size=comparison.window_size,
        detected_at=now,
        reference_size=comparison.reference_size,
        p_value=comparison.p_value,
    )


def _stream_view(stream: Stream) -> dict[str, Any]:
    statistics: dict[str, dict[str, dict[str, Any]]] = {}
    for (feature, test), comparison in sorted(stream.last.items()):
        entry: dict[str, Any] = {
            "statistic": comparison.statistic,
            "threshold": comparison.threshold,
            "drifted": comparison.drifted,
        }
        if comparison.p_value is not None:
            entry["p_value"] = comparison.p_value
        statistics.setdefault(feature, {})[test] = entry
    reference = stream.reference
    return {
        "model_name": stream.key.model_name,
        "model_version": stream.key.model_version,
        "site_id": stream.key.site_id,
        "window_size": stream.window.config.window_size,
        "window_fill": stream.window.fill,
        "samples_seen": stream.window.samples_seen,
        "checks": stream.window.checks,
        "last_check_at": stream.last_check_at,
        "reference": None
        if reference is None
        else {"source": reference.source, "size": reference.size, "features": sorted(reference.features)},
        "statistics": statistics,
    }
