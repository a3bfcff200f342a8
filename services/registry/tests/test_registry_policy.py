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


# -- a failure model: the gate compares metrics[policy_metric] (docs/telemetry.md) -----------------------------------


def failure_model(number: int, pr_auc: float | None, accuracy: float, **extra: Any) -> ModelVersion:
    figures: dict[str, Any] = {"policy_metric": "pr_auc", **extra}
    if pr_auc is not None:
        figures["pr_auc"] = pr_auc
    return version(number, accuracy, **figures)


def test_pr_auc_is_compared_not_accuracy() -> None:
    # Accuracy says the candidate is better (it flags fewer machines, which on rare failures looks accurate); the
    # policy metric says it is worse, and the policy metric decides.
    worse = decide_promotion(failure_model(2, 0.61, accuracy=0.97), failure_model(1, 0.80, accuracy=0.90), margin=0)
    assert not worse.promote
    assert "pr_auc 0.6100" in worse.reason and "0.8000" in worse.reason
    better = decide_promotion(failure_model(2, 0.85, accuracy=0.80), failure_model(1, 0.80, accuracy=0.90), margin=0)
    assert better.promote and "pr_auc 0.8500" in better.reason


def test_pr_auc_margin_and_baseline() -> None:
    production = failure_model(1, 0.90, accuracy=0.9, evaluation_set_id="evalset-a")
    # Measured on another set, but the trainer measured production on the candidate's set: the baseline counts.
    candidate = failure_model(
        2, 0.74, accuracy=0.9, evaluation_set_id="evalset-b", baseline={"version": 1, "pr_auc": 0.70, "accuracy": 0.99}
    )
    assert decide_promotion(candidate, production, margin=0.04).promote
    assert not decide_promotion(candidate, production, margin=0.05).promote
    # A baseline with accuracy only is no pr_auc baseline.
    accuracy_only = failure_model(
        2, 0.99, accuracy=0.9, evaluation_set_id="evalset-b", baseline={"version": 1, "accuracy": 0.5}
    )
    refused = decide_promotion(accuracy_only, production, margin=0.0)
    assert not refused.promote and "metrics.baseline.pr_auc" in refused.reason


def test_a_failure_model_without_its_figure_is_refused_with_the_reason() -> None:
    decision = decide_promotion(failure_model(2, None, accuracy=0.99), failure_model(1, 0.5, accuracy=0.5), margin=0)
    assert not decision.promote and "no metrics.pr_auc" in decision.reason
    # Production measured only accuracy on the same set: nothing to compare pr_auc with.
    production = version(1, 0.5)
    decision = decide_promotion(failure_model(2, 0.9, accuracy=0.9), production, margin=0)
    assert not decision.promote and "production version 1 has no metrics.pr_auc" in decision.reason


def test_image_models_still_compare_accuracy() -> None:
    # No policy_metric: accuracy, even if a pr_auc figure is there too.
    decision = decide_promotion(version(2, 0.80, pr_auc=0.1), version(1, 0.70, pr_auc=0.9), margin=0)
    assert decision.promote and "accuracy 0.8000" in decision.reason
