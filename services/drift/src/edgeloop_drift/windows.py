"""Sliding windows of live features, and their comparison with a prepared reference (PSI and KS).

A :class:`StreamWindow` holds the last ``window_size`` values of each feature of
one (model, version, site). Every ``check_every`` samples, once full, it is
compared feature by feature with the reference. Adding a sample is a few deque
appends; the cost of a check is spread over ``check_every`` samples.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import chi2

from edgeloop_drift.comparisons import KsReference, PsiReference

WindowTest = Literal["psi", "ks"]
ReferenceSource = Literal["registry", "first_window"]


@dataclass(frozen=True)
class WindowConfig:
    window_size: int = 200
    check_every: int = 25
    min_reference_samples: int = 20
    psi_threshold: float = 0.2
    psi_bins: int = 10
    psi_epsilon: float = 1e-4
    psi_noise_alpha: float = 1e-7
    ks_alpha: float = 1e-7
    features: tuple[str, ...] = ("*",)

    def tests_feature(self, feature: str) -> bool:
        return any(fnmatch.fnmatchcase(feature, pattern) for pattern in self.features)


def parse_features(text: str) -> tuple[str, ...]:
    """``"confidence, score:*"`` -> ``("confidence", "score:*")``."""
    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    if not patterns:
        raise ValueError("no feature to compare: EDGELOOP_DRIFT_FEATURES is empty")
    return patterns


@dataclass(frozen=True)
class FeatureComparison:
    """One comparison of one feature's window with its reference: the evidence of an alarm."""

    test: WindowTest
    feature: str
    statistic: float
    threshold: float
    window_size: int
    reference_size: int
    p_value: float | None = None

    @property
    def drifted(self) -> bool:
        return self.statistic > self.threshold


@dataclass(frozen=True)
class FeatureReference:
    size: int
    psi: PsiReference
    ks: KsReference
    psi_noise_quantile: float  # chi-square quantile of the PSI bins at psi_noise_alpha

    def psi_threshold(self, config: WindowConfig, window_size: int) -> float:
        """The configured threshold, or the sampling-noise bound of PSI for these sizes where that is higher.

        PSI of two samples from one distribution is about chi-square(bins - 1) * (1/n + 1/m); a small reference
        would otherwise alarm on noise alone.
        """
        noise = self.psi_noise_quantile * (1.0 / self.size + 1.0 / window_size)
        return max(config.psi_threshold, noise)


@dataclass(frozen=True)
class PreparedReference:
    """PSI bins and KS samples per feature, built once per reference."""

    source: ReferenceSource
    size: int
    features: Mapping[str, FeatureReference]
    raw: Mapping[str, Sequence[float]]

    @classmethod
    def build(
        cls, features: Mapping[str, Sequence[float]], config: WindowConfig, *, source: ReferenceSource, size: int
    ) -> PreparedReference:
        prepared: dict[str, FeatureReference] = {}
        for name, values in features.items():
            if len(values) < config.min_reference_samples or not config.tests_feature(name):
                continue
            sample = np.asarray(values, dtype=np.float64)
            psi = PsiReference.build(sample, bins=config.psi_bins, epsilon=config.psi_epsilon)
            prepared[name] = FeatureReference(
                size=sample.size,
                psi=psi,
                ks=KsReference.build(sample),
                psi_noise_quantile=float(chi2.isf(config.psi_noise_alpha, df=psi.edges.size)),
            )
        return cls(source=source, size=size, features=prepared, raw=features)


class StreamWindow:
    """The live side of one (model, version, site): windows of every feature seen."""

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.samples_seen = 0
        self.since_check = 0
        self.checks = 0
        self._values: dict[str, deque[float]] = {}

    def add(self, features: Mapping[str, float]) -> None:
        size = self.config.window_size
        for name, value in features.items():
            window = self._values.get(name)
            if window is None:
                window = self._values[name] = deque(maxlen=size)
            window.append(value)
        self.samples_seen += 1
        self.since_check += 1

    @property
    def fill(self) -> int:
        """Samples in the window. A feature missing from some samples has fewer; it is compared once it has
        ``window_size`` values."""
        return min(self.samples_seen, self.config.window_size)

    @property
    def full(self) -> bool:
        return self.samples_seen >= self.config.window_size

    def check_due(self) -> bool:
        return self.full and self.since_check >= self.config.check_every

    def snapshot(self) -> dict[str, list[float]]:
        """The full windows, as reference samples (the first-window fallback)."""
        size = self.config.window_size
        return {name: list(window) for name, window in self._values.items() if len(window) >= size}

    def compare(self, reference: PreparedReference) -> list[FeatureComparison]:
        """PSI and KS of every full feature window that the reference has."""
        self.since_check = 0
        self.checks += 1
        outcomes: list[FeatureComparison] = []
        for name, feature_reference in reference.features.items():
            window = self._values.get(name)
            if window is None or len(window) < self.config.window_size:
                continue
            outcomes.extend(compare_feature(name, np.fromiter(window, np.float64), feature_reference, self.config))
        return outcomes

    def features(self) -> Iterable[str]:
        return self._values.keys()


def compare_feature(
    name: str, window: np.ndarray, reference: FeatureReference, config: WindowConfig
) -> tuple[FeatureComparison, FeatureComparison]:
    live = np.sort(window)
    psi_value = reference.psi.statistic_of(live)
    ks = reference.ks.compare_sorted(live, alpha=config.ks_alpha)
    return (
        FeatureComparison(
            test="psi",
            feature=name,
            statistic=psi_value,
            threshold=reference.psi_threshold(config, window.size),
            window_size=window.size,
            reference_size=reference.size,
        ),
        FeatureComparison(
            test="ks",
            feature=name,
            statistic=ks.statistic,
            threshold=ks.critical,
            window_size=window.size,
            reference_size=reference.size,
            p_value=ks.p_value,
        ),
    )
