"""Two-sample comparisons of a live window with a reference: PSI and Kolmogorov-Smirnov.

Each reference is prepared once (PSI bin edges and expected fractions, the
sorted KS sample), so a check costs a sort of the window and a few searches.

* PSI (population stability index): bins at the reference's quantiles, so each
  holds about 1/bins of the reference; fractions below ``epsilon`` are raised to
  it so an empty bin gives a large but finite term. ``sum((a - e) * ln(a / e))``.
* KS: the two-sample statistic ``D = max |F_ref - F_window|`` and its p-value
  from the Kolmogorov distribution with Stephens' small-sample correction,
  ``Q((sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * D)`` with ``ne = n*m / (n+m)``
  (within a few percent of ``scipy.stats.ks_2samp``'s exact and asymptotic
  p-values at these sizes, and 1 us instead of 100 us). The threshold is
  reported as the critical ``D`` at the configured alpha for these sample
  sizes, so "statistic > threshold" reads the same for every test.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import kolmogi, kolmogorov

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class PsiReference:
    """Bin edges (interior, increasing, unique) and the reference's smoothed fraction per bin."""

    edges: FloatArray
    expected: FloatArray
    epsilon: float

    @classmethod
    def build(cls, reference: ArrayLike, *, bins: int = 10, epsilon: float = 1e-4) -> PsiReference:
        values = _as_sample(reference)
        if bins < 2:
            raise ValueError("PSI needs at least 2 bins")
        quantiles = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        # Repeated quantiles (discrete features: width, height) collapse into one edge.
        edges = np.unique(quantiles)
        return cls(edges=edges, expected=_fractions(values, edges, epsilon), epsilon=epsilon)

    def statistic(self, window: ArrayLike) -> float:
        return self.statistic_of(_as_sample(window))

    def statistic_of(self, window: FloatArray) -> float:
        """PSI of a window already known to be a non-empty array of finite floats (the hot path)."""
        actual = _fractions(window, self.edges, self.epsilon)
        return float(((actual - self.expected) * np.log(actual / self.expected)).sum())


def psi(reference: ArrayLike, window: ArrayLike, *, bins: int = 10, epsilon: float = 1e-4) -> float:
    """PSI of ``window`` against ``reference`` (bins at the reference's quantiles)."""
    return PsiReference.build(reference, bins=bins, epsilon=epsilon).statistic(window)


@dataclass(frozen=True)
class KsResult:
    statistic: float
    p_value: float
    critical: float  # the statistic above which p < alpha


@dataclass(frozen=True)
class KsReference:
    sorted_values: FloatArray

    @classmethod
    def build(cls, reference: ArrayLike) -> KsReference:
        return cls(sorted_values=np.sort(_as_sample(reference)))

    def compare(self, window: ArrayLike, *, alpha: float) -> KsResult:
        return self.compare_sorted(np.sort(_as_sample(window)), alpha=alpha)

    def compare_sorted(self, live: FloatArray, *, alpha: float) -> KsResult:
        """The test for a window already sorted, non-empty and finite (the hot path)."""
        statistic = ks_statistic_sorted(self.sorted_values, live)
        scale = ks_scale(self.sorted_values.size, live.size)
        return KsResult(
            statistic=statistic,
            p_value=min(1.0, max(0.0, float(kolmogorov(scale * statistic)))),
            critical=_kolmogorov_quantile(alpha) / scale,
        )


def ks_2samp(reference: ArrayLike, window: ArrayLike, *, alpha: float = 0.01) -> KsResult:
    """Two-sample Kolmogorov-Smirnov test (two-sided; asymptotic p-value with Stephens' correction)."""
    return KsReference.build(reference).compare(window, alpha=alpha)


def ks_statistic_sorted(reference: FloatArray, window: FloatArray) -> float:
    """``max |F_ref(x) - F_win(x)|`` over all x, for two sorted samples (ties handled).

    Between two consecutive window values F_win is constant and F_ref only rises, so ``F_ref - F_win`` is
    largest just before a window value (F_ref's left limit against F_win's) and ``F_win - F_ref`` at a window
    value (right limits); before the first and after the last window value the same holds. The window's i-th
    value (from 0) stands for F_win = i/m on its left and (i+1)/m on its right: within a run of tied values
    that is wrong for all but one of them, but the maxima over the run are still the true ones (the first
    value of the run gives the largest left difference, the last the largest right one). So the statistic
    needs two searches of the window's values in the reference and no tie handling; it is computed in
    integers (scaled by n*m) and divided once.
    """
    n, m = reference.size, window.size
    positions = _positions(m)
    below = reference.searchsorted(window, side="left")  # n * F_ref just before each window value
    upto = reference.searchsorted(window, side="right")  # n * F_ref at each window value
    ref_above = (below * m - positions * n).max()  # (F_ref - F_win) * n * m, left limits
    win_above = ((positions + 1) * n - upto * m).max()  # (F_win - F_ref) * n * m, right limits
    return float(max(ref_above, win_above, 0)) / (n * m)


@functools.lru_cache(maxsize=16)
def _kolmogorov_quantile(alpha: float) -> float:
    return float(kolmogi(alpha))


@functools.lru_cache(maxsize=64)
def _positions(size: int) -> NDArray[np.int64]:
    positions = np.arange(size, dtype=np.int64)
    positions.flags.writeable = False
    return positions


def ks_scale(n_first: int, n_second: int) -> float:
    """``sqrt(ne) + 0.12 + 0.11 / sqrt(ne)``, ``ne = n*m / (n+m)``: D times this is Kolmogorov-distributed."""
    root = math.sqrt(n_first * n_second / (n_first + n_second))
    return root + 0.12 + 0.11 / root


def _fractions(values: FloatArray, edges: FloatArray, epsilon: float) -> FloatArray:
    counts = np.bincount(edges.searchsorted(values, side="right"), minlength=edges.size + 1)
    return np.maximum(counts / values.size, epsilon)


def _as_sample(values: ArrayLike) -> FloatArray:
    sample = np.asarray(values, dtype=np.float64).ravel()
    if sample.size == 0:
        raise ValueError("cannot compare an empty sample")
    if not np.all(np.isfinite(sample)):
        raise ValueError("sample has values that are not finite numbers")
    return sample
