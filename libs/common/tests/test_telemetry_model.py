"""The failure model's evaluation maths (docs/telemetry.md, "Evaluation") and the Keras model's own promises.

Learning the simulated failures, the export and the served model: apps/edgeloop/tests/test_telemetry_training.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from edgeloop_common.telemetry import model as failure
from edgeloop_common.telemetry.features import FEATURE_NAMES, LabelledWindows


def scored(n: int, positive_rate: float, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positive_rate).astype(np.float32)
    logits = rng.normal(0.0, 1.0, n) + separation * labels - 2.0
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32), labels


def brute_force_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP = mean over positives of the precision at that positive's score (ties: all of them counted)."""
    positives = scores[labels > 0.5]
    return float(np.mean([labels[scores >= s].mean() for s in positives]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pr_auc_is_average_precision(seed: int) -> None:
    scores, labels = scored(600, 0.07, 2.0, seed)
    scores = np.round(scores, 2)  # ties on purpose
    assert failure.evaluate(scores, labels)["pr_auc"] == pytest.approx(brute_force_average_precision(scores, labels))


def test_perfect_random_and_inverted_rankings() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1], dtype=np.float32)
    assert failure.evaluate(np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9]), labels)["pr_auc"] == pytest.approx(1.0)
    inverted = failure.evaluate(np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1]), labels)
    assert inverted["pr_auc"] == pytest.approx((1 / 5 + 2 / 6) / 2)  # the positives ranked 5th and 6th
    constant = failure.evaluate(np.full(6, 0.5), labels)
    assert constant["pr_auc"] == pytest.approx(2 / 6)  # one tie: the positive rate


def test_threshold_maximises_f1_and_precision_recall_are_read_there() -> None:
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 1, 0, 0, 0, 1], dtype=np.float32)
    figures = failure.evaluate(scores, labels)
    # At >= 0.7: tp 3, fp 1 -> precision 0.75, recall 0.75, F1 0.75 (the best of every cut).
    assert figures["threshold"] == pytest.approx(0.7)
    assert (figures["precision"], figures["recall"], figures["f1"]) == pytest.approx((0.75, 0.75, 0.75))
    assert (figures["positives"], figures["windows"]) == (4, 8)
    given = failure.evaluate(scores, labels, threshold=0.85)  # a threshold chosen elsewhere is applied as given
    assert (given["threshold"], given["precision"], given["recall"]) == pytest.approx((0.85, 1.0, 0.5))


def test_no_positives_gives_zero_figures_not_nan() -> None:
    figures = failure.evaluate(np.array([0.1, 0.9]), np.zeros(2))
    assert figures["pr_auc"] == 0.0 and figures["positives"] == 0 and figures["windows"] == 2
    assert all(np.isfinite(v) for v in figures.values() if isinstance(v, float))


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="probabilities for"):
        failure.evaluate(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="counts are"):
        failure.metrics_from_counts(np.zeros((3, 10)))


@pytest.mark.parametrize(("rate", "separation", "seed"), [(0.03, 3.0, 0), (0.08, 1.5, 1), (0.2, 0.7, 2)])
def test_counts_give_the_direct_figures_within_a_small_tolerance(rate: float, separation: float, seed: int) -> None:
    scores, labels = scored(20_000, rate, separation, seed)
    direct = failure.evaluate(scores, labels)
    counted = failure.metrics_from_counts(failure.score_counts(scores, labels))
    assert counted["pr_auc"] == pytest.approx(direct["pr_auc"], abs=0.005)
    # Where F1 is flat the best cut may move, but not the F1 reached.
    assert counted["f1"] == pytest.approx(direct["f1"], abs=0.01)
    assert (counted["positives"], counted["windows"]) == (direct["positives"], direct["windows"])
    at = failure.metrics_from_counts(failure.score_counts(scores, labels), threshold=0.5)
    assert at["recall"] == pytest.approx(float(labels[scores >= 0.5].sum() / labels.sum()), abs=0.002)


def test_sites_counts_add_up_to_the_union() -> None:
    scores, labels = scored(9_000, 0.05, 2.5, 7)
    parts = [failure.score_counts(scores[i::3], labels[i::3]) for i in range(3)]
    assert np.array_equal(sum(parts), failure.score_counts(scores, labels))
    assert failure.score_counts(scores, labels).sum() == len(scores)
    assert failure.score_counts(scores, labels)[0].sum() == labels.sum()


def test_class_weights_balance_the_classes() -> None:
    labels = np.array([1] * 5 + [0] * 95, dtype=np.float32)
    weights = failure.class_weights(labels)
    assert weights[1] * 5 == pytest.approx(weights[0] * 95)
    assert failure.class_weights(np.zeros(4)) == {0: 1.0, 1: 1.0}


def test_reference_stats_sample_every_feature_and_summarise_them() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3000, len(FEATURE_NAMES))) * np.arange(1, 26)
    stats = failure.reference_stats(features, max_samples=500)
    assert stats["kind"] == "telemetry_features" and stats["n"] == 3000
    assert stats["feature_names"] == list(FEATURE_NAMES)
    assert all(len(stats["features"][name]) == 500 for name in FEATURE_NAMES)
    assert stats["summary"]["rpm_slope"]["std"] == pytest.approx(25.0, rel=0.05)
    # The shape the drift service already validates (edgeloop_common.reference_stats.ReferenceStats).
    from edgeloop_common.reference_stats import ReferenceStats

    assert set(ReferenceStats.model_validate(stats).features) == set(FEATURE_NAMES)
    with pytest.raises(ValueError, match="features are"):
        failure.reference_stats(np.zeros((3, 4)))
    per_site = failure.reference_stats(features, sites={"b": features[:100], "a": features[100:]}, max_samples=50)
    assert list(per_site["sites"]) == ["a", "b"] and per_site["sites"]["b"]["n"] == 100
    assert len(per_site["sites"]["a"]["features"]["rpm_mean"]) == 50


def test_held_out_devices_depend_on_the_ids_and_seed_only() -> None:
    devices = [("site-a", f"m{i:03d}") for i in range(2000)]
    held = [d for d in devices if failure.is_held_out(*d, eval_fraction=0.25, seed=0)]
    assert len(held) == pytest.approx(500, abs=60)
    again = [d for d in reversed(devices) if failure.is_held_out(*d, eval_fraction=0.25, seed=0)]
    assert sorted(again) == sorted(held)
    other_seed = [d for d in devices if failure.is_held_out(*d, eval_fraction=0.25, seed=1)]
    assert other_seed != held


@pytest.mark.tf
def test_the_normalisation_is_inside_the_model_and_travels_with_its_weights() -> None:
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(400, len(FEATURE_NAMES))) * 100 + 1000).astype(np.float32)
    model = failure.build_model("logistic", normalization_from=features)
    layer = model.get_layer("normalization")
    assert np.allclose(np.asarray(layer.mean).reshape(-1), features.mean(axis=0), rtol=1e-4)
    plain = failure.build_model("logistic")  # no data: the identity until weights arrive (a federated model)
    assert not np.allclose(failure.predict(plain, features[:5]), failure.predict(model, features[:5]))
    plain.set_weights(model.get_weights())  # Keras's own set_weights, after a first prediction: as a federated round
    assert np.allclose(failure.predict(plain, features[:5]), failure.predict(model, features[:5]))
    assert np.allclose(np.asarray(plain(features[:5])).reshape(-1), failure.predict(model, features[:5]), atol=1e-6)
    failure.set_normalization(plain, np.zeros(25), np.ones(25))
    assert not np.allclose(failure.predict(plain, features[:5]), failure.predict(model, features[:5]))
    mlp = failure.build_model("mlp", normalization_from=features)
    assert failure.model_kind(mlp) == "mlp" and failure.model_kind(model) == "logistic"
    assert failure.predict(mlp, features).shape == (400,)
    with pytest.raises(ValueError, match="model kind"):
        failure.build_model("forest")  # type: ignore[arg-type]


@pytest.mark.tf
def test_fit_learns_a_separable_rare_class_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(2000) < 0.05).astype(np.float32)
    features = rng.normal(size=(2000, len(FEATURE_NAMES))).astype(np.float32)
    features[:, 5] += 4.0 * labels  # one feature tells the failures apart
    windows = LabelledWindows(features, labels)

    def trained() -> np.ndarray:
        model = failure.build_model(normalization_from=features, seed=3)
        failure.fit(model, windows, epochs=10, seed=3)
        return failure.predict(model, features)

    first = trained()
    assert failure.evaluate(first, labels)["pr_auc"] > 0.8
    assert np.allclose(first, trained(), atol=1e-6)
    with pytest.raises(ValueError, match="no training windows"):
        failure.fit(failure.build_model(), LabelledWindows(features[:0], labels[:0]))
