"""PSI and two-sample KS on known distributions, and KS checked against scipy.stats.ks_2samp."""

from __future__ import annotations

import math

import numpy as np
import pytest
from edgeloop_drift.comparisons import KsReference, PsiReference, ks_2samp, psi
from scipy import stats


def test_psi_of_samples_from_one_distribution_is_small_and_of_a_shifted_one_large() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0.0, 1.0, 5000)
    assert psi(reference, rng.normal(0.0, 1.0, 5000)) < 0.01
    # Equal-variance normals one sd apart: the symmetric KL divergence PSI estimates is 1.
    assert 0.7 < psi(reference, rng.normal(1.0, 1.0, 5000)) < 1.2
    assert psi(reference, rng.normal(0.25, 1.0, 5000)) == pytest.approx(0.0625, abs=0.03)


def test_psi_by_hand_two_bins_and_an_empty_bin_raised_to_epsilon() -> None:
    reference = np.arange(100.0)  # median 49.5: bins [<49.5, >=49.5], half each
    window = np.arange(50.0)  # every value in the lower bin; the upper one is empty -> epsilon
    expected = 0.5 * math.log(1.0 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi(reference, window, bins=2, epsilon=1e-4) == pytest.approx(expected, rel=1e-12)


def test_psi_bins_are_the_reference_quantiles() -> None:
    prepared = PsiReference.build(np.arange(1000.0), bins=10)
    assert prepared.edges.size == 9
    assert prepared.expected == pytest.approx(np.full(10, 0.1))


def test_psi_of_a_discrete_feature_collapses_repeated_edges() -> None:
    widths = np.full(300, 500.0)
    prepared = PsiReference.build(widths, bins=10)
    assert prepared.edges.tolist() == [500.0]
    assert prepared.statistic(np.full(200, 500.0)) == pytest.approx(0.0)
    assert prepared.statistic(np.full(200, 320.0)) > 5.0  # a new camera resolution is a large change


def test_ks_statistic_by_hand_with_and_without_ties() -> None:
    assert ks_2samp([1, 2, 3, 4], [3, 4, 5, 6]).statistic == pytest.approx(0.5)
    assert ks_2samp([1, 1, 2, 2], [2, 2, 3, 3]).statistic == pytest.approx(0.5)
    assert ks_2samp([0, 0, 0, 1], [0, 1, 1, 1]).statistic == pytest.approx(0.5)
    assert ks_2samp([1, 2, 3], [1, 2, 3]).statistic == pytest.approx(0.0)
    assert ks_2samp([1, 2, 3], [10, 11]).statistic == pytest.approx(1.0)


def test_ks_matches_scipy_statistic_exactly_and_p_value_closely() -> None:
    """The p-value is asymptotic (Stephens' correction): within 25% of scipy's exact one at these sizes, where
    scipy's own asymptotic p-value is off by up to 17%."""
    rng = np.random.default_rng(2)
    for case in range(200):
        n, m = int(rng.integers(20, 1200)), int(rng.integers(20, 400))
        decimals = int(rng.integers(1, 6))  # few decimals: many ties
        reference = np.round(rng.normal(0.0, 1.0, n), decimals)
        window = np.round(rng.normal(rng.uniform(0.0, 0.6), 1.0, m), decimals)
        ours = ks_2samp(reference, window)
        theirs = stats.ks_2samp(reference, window, method="exact")
        assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12), case
        assert ours.p_value == pytest.approx(theirs.pvalue, rel=0.25, abs=1e-9), case


def test_ks_p_value_below_alpha_exactly_when_statistic_above_the_reported_critical_value() -> None:
    rng = np.random.default_rng(3)
    reference = KsReference.build(rng.normal(0.0, 1.0, 1000))
    for alpha in (0.01, 1e-4, 1e-7):
        for shift in np.linspace(0.0, 0.8, 17):
            result = reference.compare(rng.normal(shift, 1.0, 200), alpha=alpha)
            assert (result.p_value < alpha) == (result.statistic > result.critical), (alpha, shift)


def test_ks_of_identical_distributions_is_not_significant_and_of_shifted_ones_is() -> None:
    rng = np.random.default_rng(4)
    reference = rng.beta(6.96, 8.64, 1000)
    same = ks_2samp(reference, rng.beta(6.96, 8.64, 200), alpha=0.01)
    darker = ks_2samp(reference, rng.beta(6.96, 8.64, 200) * 0.5, alpha=1e-7)
    assert same.p_value > 0.01 and same.statistic < same.critical
    assert darker.p_value < 1e-20 and darker.statistic > 0.7


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_an_empty_or_non_finite_sample_is_refused_with_the_reason(bad: list[float]) -> None:
    with pytest.raises(ValueError, match=r"empty|finite"):
        psi([1.0, 2.0, 3.0], bad)
    with pytest.raises(ValueError, match=r"empty|finite"):
        ks_2samp(bad, [1.0, 2.0])
