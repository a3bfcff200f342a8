"""The promotion policy as a pure function: what it decides and the reason it gives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edgeloop_registry.service import Lineage, ModelVersion, decide_promotion


def version(
    number: int, accuracy: float | None, evaluation_set_id: str | None = "evalset-a", **extra: Any
) -> ModelVersion:
    metrics: dict[str, Any] = dict(extra)
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    if evaluation_set_id is not None:
        metrics["evaluation_set_id"] = evaluation_set_id
    return ModelVersion(
        model_name="classifier",
        version=number,
        status="ready",
        artifact_uri=f"file:///models/classifier/{number}",
        signature={},
        metrics=metrics,
        reference_stats=None,
        lineage=Lineage(),
        train_started_at=None,
        train_duration_s=None,
        created_at=datetime.now(UTC),
    )


def test_no_production_promotes_whatever_the_metrics() -> None:
    decision = decide_promotion(version(1, None, None), None, margin=0.05)
    assert decision.promote
    assert "no production version" in decision.reason


def test_better_by_the_margin_is_promoted() -> None:
    decision = decide_promotion(version(2, 0.75), version(1, 0.70), margin=0.05)
    assert decision.promote, decision.reason  # 0.70 + 0.05 is 0.7499999... in floats: a tie still reaches the bar
    assert "0.7500" in decision.reason and "evalset-a" in decision.reason


def test_better_but_not_by_the_margin_is_refused() -> None:
    decision = decide_promotion(version(2, 0.74), version(1, 0.70), margin=0.05)
    assert not decision.promote
    assert decision.reason.startswith("refused") and "margin 0.0500" in decision.reason


def test_worse_is_refused() -> None:
    decision = decide_promotion(version(2, 0.60), version(1, 0.70), margin=0.0)
    assert not decision.promote
    assert "0.6000" in decision.reason and "0.7000" in decision.reason


def test_equal_with_margin_zero_is_promoted_and_with_a_margin_refused() -> None:
    assert decide_promotion(version(2, 0.70), version(1, 0.70), margin=0.0).promote
    assert not decide_promotion(version(2, 0.70), version(1, 0.70), margin=0.01).promote


def test_different_evaluation_sets_are_refused_with_the_reason() -> None:
    decision = decide_promotion(version(2, 0.99, "evalset-b"), version(1, 0.50, "evalset-a"), margin=0.0)
    assert not decision.promote
    assert (
        "evalset-b" in decision.reason and "evalset-a" in decision.reason and "same evaluation set" in decision.reason
    )


def test_missing_evaluation_set_is_refused() -> None:
    assert not decide_promotion(version(2, 0.99, None), version(1, 0.50, None), margin=0.0).promote


def test_the_baseline_measured_on_the_candidate_set_is_used_for_the_production_version() -> None:
    """The trainer evaluated production (version 1) on the candidate's new evaluation set: 0.62 there, not 0.90."""
    candidate = version(2, 0.70, "evalset-b", baseline={"version": 1, "accuracy": 0.62})
    production = version(1, 0.90, "evalset-a")
    decision = decide_promotion(candidate, production, margin=0.05)
    assert decision.promote, decision.reason
    assert "0.6200" in decision.reason
    worse = version(2, 0.60, "evalset-b", baseline={"version": 1, "accuracy": 0.62})
    assert not decide_promotion(worse, production, margin=0.0).promote


def test_a_baseline_of_another_version_is_not_used() -> None:
    candidate = version(3, 0.80, "evalset-b", baseline={"version": 1, "accuracy": 0.10})
    decision = decide_promotion(candidate, version(2, 0.70, "evalset-a"), margin=0.0)
    assert not decision.promote
    assert "no baseline for production version 2" in decision.reason


def test_a_candidate_without_accuracy_is_refused() -> None:
    decision = decide_promotion(version(2, None), version(1, 0.70), margin=0.0)
    assert not decision.promote and "no metrics.accuracy" in decision.reason
