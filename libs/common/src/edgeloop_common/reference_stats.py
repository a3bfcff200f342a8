"""Reference statistics of a model version: what the drift service compares live predictions with.

The trainer computes them on its evaluation set when it registers a version
(``reference_stats`` of the registry version, docs/learning-loop.md "Drift");
the drift service reads them back. Both use this module, so the feature names
agree. The shape is plain JSON::

    {"n": 82,
     "features": {"confidence": [...], "score:cat": [...], "score:dog": [...],
                  "brightness_mean": [...], "contrast_std": [...], "sharpness_laplacian_var": [...],
                  "saturation_mean": [...], "red_green_mean": [...], "blue_yellow_mean": [...],
                  "width": [...], "height": [...]},
     "class_frequencies": {"cat": 0.5, "dog": 0.5}}

Features are raw samples (at most ``MAX_SAMPLES_PER_FEATURE`` each) from which
the drift service builds its PSI bins and KS references. ``image_stats`` must be
measured the way the inference gateway measures live images
(``edgeloop_common.images.inspect_image``), or a difference in
method reads as drift.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SAMPLES_PER_FEATURE = 1000
CONFIDENCE = "confidence"
SCORE_PREFIX = "score:"
IMAGE_FEATURES: tuple[str, ...] = (
    "brightness_mean",
    "contrast_std",
    "sharpness_laplacian_var",
    "saturation_mean",
    "red_green_mean",
    "blue_yellow_mean",
    "width",
    "height",
)


def score_feature(class_name: str) -> str:
    """The feature name of one class's score: ``score:<class>``."""
    return f"{SCORE_PREFIX}{class_name}"


class SiteReference(BaseModel):
    """One site's own reference samples (a telemetry model's ``reference_stats.sites``: sites differ)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    n: int = Field(ge=0)
    features: dict[str, list[float]]

    @field_validator("features")
    @classmethod
    def _finite_samples(cls, features: dict[str, list[float]]) -> dict[str, list[float]]:
        return _finite(features)


class ReferenceStats(BaseModel):
    """Validated ``reference_stats``: raw samples per feature, and the predicted-class frequencies.

    A telemetry model's (``kind: "telemetry_features"``, docs/telemetry.md "Drift on readings") may also carry
    ``sites``: each site's own samples, which the drift service prefers for that site's window.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    n: int = Field(ge=0)
    features: dict[str, list[float]]
    class_frequencies: dict[str, float] = Field(default_factory=dict)
    kind: str = "image"
    sites: dict[str, SiteReference] = Field(default_factory=dict)

    @field_validator("features")
    @classmethod
    def _finite_samples(cls, features: dict[str, list[float]]) -> dict[str, list[float]]:
        return _finite(features)


def _finite(features: dict[str, list[float]]) -> dict[str, list[float]]:
    for name, values in features.items():
        if not all(math.isfinite(value) for value in values):
            raise ValueError(f"feature {name!r} has a value that is not a finite number")
    return features


def sample_features(
    scores: Mapping[str, float], confidence: float, image_stats: Mapping[str, float]
) -> dict[str, float]:
    """The drift features of one prediction: confidence, ``score:<class>`` and the image statistics."""
    features = {CONFIDENCE: float(confidence)}
    features.update({score_feature(name): float(score) for name, score in scores.items()})
    features.update({name: float(image_stats[name]) for name in IMAGE_FEATURES if name in image_stats})
    return {name: value for name, value in features.items() if math.isfinite(value)}


def compute_reference_stats(
    records: Iterable[Mapping[str, Any]], *, max_samples: int = MAX_SAMPLES_PER_FEATURE
) -> dict[str, Any]:
    """``reference_stats`` (JSON-ready) from per-sample records ``{"scores", "confidence", "image_stats"}``.

    ``confidence`` defaults to the top score when absent. More than ``max_samples`` values of a feature are
    thinned to ``max_samples`` evenly spaced ones (deterministic: the same records give the same reference).
    ``class_frequencies`` are those of the predicted (top-scoring) class, which live predictions can be
    compared with before any label exists.
    """
    if max_samples < 1:
        raise ValueError("max_samples must be at least 1")
    features: dict[str, list[float]] = {}
    predicted: dict[str, int] = {}
    count = 0
    for record in records:
        scores = {str(name): float(value) for name, value in dict(record.get("scores") or {}).items()}
        if not scores:
            raise ValueError("a reference record needs its per-class scores")
        confidence = record.get("confidence")
        top_class = max(scores, key=lambda name: scores[name])
        values = sample_features(
            scores, max(scores.values()) if confidence is None else float(confidence), record.get("image_stats") or {}
        )
        for name, value in values.items():
            features.setdefault(name, []).append(value)
        predicted[top_class] = predicted.get(top_class, 0) + 1
        count += 1
    return {
        "n": count,
        "features": {name: _thin(values, max_samples) for name, values in sorted(features.items())},
        "class_frequencies": {name: hits / count for name, hits in sorted(predicted.items())} if count else {},
    }


def _thin(values: list[float], limit: int) -> list[float]:
    if len(values) <= limit:
        return values
    step = len(values) / limit
    return [values[int(index * step)] for index in range(limit)]
