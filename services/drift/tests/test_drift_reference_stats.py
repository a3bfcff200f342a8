"""``edgeloop_common.reference_stats``: what the trainer stores and the drift service reads back."""

from __future__ import annotations

import json

import pytest
from edgeloop_common.reference_stats import ReferenceStats, compute_reference_stats, sample_features
from pydantic import ValidationError


def record(cat: float, brightness: float = 0.4, **extra: float) -> dict[str, object]:
    return {
        "scores": {"cat": cat, "dog": 1 - cat},
        "confidence": max(cat, 1 - cat),
        "image_stats": {"brightness_mean": brightness, "width": 500.0, "height": 375.0, **extra},
    }


def test_reference_stats_have_every_feature_and_predicted_class_frequencies() -> None:
    stats = compute_reference_stats([record(0.9, 0.3), record(0.2, 0.5), record(0.7, 0.6, contrast_std=0.2)])
    assert stats["n"] == 3
    assert stats["features"]["confidence"] == pytest.approx([0.9, 0.8, 0.7])
    assert stats["features"]["score:cat"] == pytest.approx([0.9, 0.2, 0.7])
    assert stats["features"]["score:dog"] == pytest.approx([0.1, 0.8, 0.3])
    assert stats["features"]["brightness_mean"] == [0.3, 0.5, 0.6]
    assert stats["features"]["contrast_std"] == [0.2]  # only the record that had it
    assert stats["features"]["width"] == [500.0, 500.0, 500.0]
    assert stats["class_frequencies"] == pytest.approx({"cat": 2 / 3, "dog": 1 / 3})
    assert ReferenceStats.model_validate(json.loads(json.dumps(stats))).n == 3  # plain JSON, readable back


def test_large_evaluation_sets_are_thinned_evenly_and_deterministically() -> None:
    records = [record(0.5 + index / 10_000, brightness=index / 2500) for index in range(2500)]
    stats = compute_reference_stats(records, max_samples=1000)
    assert stats["n"] == 2500
    brightness = stats["features"]["brightness_mean"]
    assert len(brightness) == 1000
    assert brightness[0] == 0.0 and brightness[-1] > 0.99  # spans the whole set, not its first 1000
    assert compute_reference_stats(records, max_samples=1000) == stats


def test_confidence_defaults_to_the_top_score_and_unknown_image_stats_are_ignored() -> None:
    stats = compute_reference_stats([{"scores": {"cat": 0.3, "dog": 0.7}, "image_stats": {"exposure_ev": 3.0}}])
    assert stats["features"] == {"confidence": [0.7], "score:cat": [0.3], "score:dog": [0.7]}


def test_a_record_without_scores_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="scores"):
        compute_reference_stats([{"confidence": 0.9, "image_stats": {}}])


def test_non_finite_values_are_left_out_of_features_and_refused_in_stored_stats() -> None:
    assert "brightness_mean" not in sample_features({"cat": 1.0}, 1.0, {"brightness_mean": float("nan")})
    with pytest.raises(ValidationError, match="finite"):
        ReferenceStats.model_validate({"n": 1, "features": {"confidence": [float("inf")]}})
