"""What crosses instead of windows adds up to the truth: pooled moments, histograms, the held-out split."""

from __future__ import annotations

import numpy as np
import pytest
from edgeloop_common.telemetry.features import FEATURE_NAMES
from edgeloop_federated.adapters.flower_client import decode_array, encode_array
from edgeloop_federated.adapters.flower_server import moment_rows
from edgeloop_federated.site import (
    HISTOGRAM_BINS,
    feature_histograms,
    feature_moments,
    histogram_edges,
    pooled_normalisation,
    reference_from_histograms,
)


def _sites(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    width = len(FEATURE_NAMES)
    return [rng.normal(loc, scale, size=(n, width)) for loc, scale, n in ((0, 1, 500), (40, 5, 300), (1500, 80, 700))]


def test_pooled_moments_are_the_union_s_mean_and_variance() -> None:
    parts = _sites()
    mean, variance, n = pooled_normalisation([feature_moments(part) for part in parts])
    union = np.concatenate(parts)
    assert n == len(union)
    np.testing.assert_allclose(mean, union.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(variance, union.var(axis=0), rtol=1e-6)


def test_the_model_s_normalisation_adapted_on_two_rows_equals_the_pooled_moments() -> None:
    mean, variance, _ = pooled_normalisation([feature_moments(part) for part in _sites()])
    rows = moment_rows(mean, variance)
    np.testing.assert_allclose(rows.astype(np.float64).mean(axis=0), mean, rtol=1e-5)
    np.testing.assert_allclose(rows.astype(np.float64).var(axis=0), variance, rtol=1e-4)


def test_summed_histograms_are_the_union_s_and_give_a_drift_reference() -> None:
    parts = _sites()
    mean, variance, _ = pooled_normalisation([feature_moments(part) for part in parts])
    edges = histogram_edges(mean, variance)
    summed = sum(feature_histograms(part, edges) for part in parts)
    np.testing.assert_array_equal(summed, feature_histograms(np.concatenate(parts), edges))
    assert summed.shape == (len(FEATURE_NAMES), HISTOGRAM_BINS + 2)
    per_site = {f"site-{i}": feature_histograms(part, edges) for i, part in enumerate(parts)}
    reference = reference_from_histograms(np.asarray(summed), edges, mean, variance, per_site=per_site)
    assert reference["kind"] == "telemetry_features" and reference["n"] == 1500
    samples = np.array(reference["features"][FEATURE_NAMES[0]])
    assert 900 <= len(samples) <= 1100
    # the three sites' modes survive: the reference is not a single bump around the pooled mean
    assert np.mean(samples < 500) == pytest.approx(800 / 1500, abs=0.05)
    assert np.mean(samples > 1000) == pytest.approx(700 / 1500, abs=0.05)
    # each site's own samples, for the drift service's per-site comparison
    assert {site: entry["n"] for site, entry in reference["sites"].items()} == {
        "site-0": 500,
        "site-1": 300,
        "site-2": 700,
    }
    assert np.mean(np.array(reference["sites"]["site-2"]["features"][FEATURE_NAMES[0]]) > 1000) > 0.95


def test_arrays_cross_as_little_endian_bytes_and_come_back_equal() -> None:
    counts = np.arange(12, dtype=np.int64).reshape(2, 6)
    np.testing.assert_array_equal(decode_array(encode_array(counts, "int64"), "int64", (2, 6)), counts)
    with pytest.raises(ValueError, match="expected bytes"):
        decode_array("not bytes", "int64", (2, 6))
