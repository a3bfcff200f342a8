"""What a site computes from its own history, and what the cloud can make of the sums (no Flower, no TensorFlow).

A site's windows are split by device: the held-out devices' windows are never trained on, only evaluated (a
machine's windows are alike, so windows of one machine on both sides would flatter the figures). The split is the
failure model's ``is_held_out``, a pure function of the ids and a seed, so a centralised training over the same
sites holds out the very same windows (bench/telemetry_federated.py compares the two on them).

Federated analytics: before round 1 every site sends the count, sum and sum of squares of each feature of its
training windows (the cloud pools them into the model's normalisation), then a histogram of each feature on bins the
cloud chose (the cloud sums them into the drift reference of the version). Sums and counts, never a window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from edgeloop_common.reference_stats import MAX_SAMPLES_PER_FEATURE
from edgeloop_common.telemetry.features import FEATURE_NAMES, LabelledWindows, concatenate, labelled_windows
from edgeloop_common.telemetry.history import SiteHistory
from edgeloop_common.telemetry.model import REFERENCE_KIND, is_held_out

HELD_OUT_FRACTION = 0.25
HISTOGRAM_BINS = 64  # between mean - 4 std and mean + 4 std of the pooled moments, plus one open bin each side
HISTOGRAM_SPAN_STD = 4.0


@dataclass(frozen=True)
class SiteWindows:
    site_id: str
    train: LabelledWindows
    held_out: LabelledWindows
    train_devices: tuple[str, ...]
    held_out_devices: tuple[str, ...]


def site_windows(
    history: SiteHistory, site_id: str | None = None, *, held_out_fraction: float = HELD_OUT_FRACTION, seed: int = 0
) -> SiteWindows:
    """The site's training and held-out windows (``labelled_windows`` per device, devices in a fixed order).

    Held out by device with the failure model's own ``is_held_out`` (from the ids and the seed alone), so a
    centralised training over the same sites (``edgeloop train --telemetry``) holds out the very same machines.
    ``site_id`` keeps one site's devices when a file holds several; None: every device in the file.
    """
    devices = sorted(pair for pair in history.devices() if site_id is None or pair[0] == site_id)
    train_parts, held_parts, train_names, held_names = [], [], [], []
    for site, device in devices:
        windows = labelled_windows(list(history.device_history(site, device)))
        if is_held_out(site, device, eval_fraction=held_out_fraction, seed=seed):
            held_parts.append(windows)
            held_names.append(f"{site}/{device}")
        else:
            train_parts.append(windows)
            train_names.append(f"{site}/{device}")
    return SiteWindows(
        site_id=site_id or (devices[0][0] if devices else ""),
        train=concatenate(train_parts),
        held_out=concatenate(held_parts),
        train_devices=tuple(train_names),
        held_out_devices=tuple(held_names),
    )


# --- federated analytics -------------------------------------------------------------------------------------------


def feature_moments(features: np.ndarray) -> dict[str, Any]:
    """Count, per-feature sum and sum of squares (float64): what a site tells the cloud for the normalisation."""
    values = np.asarray(features, dtype=np.float64)
    return {"n": len(values), "sum": values.sum(axis=0), "sum_squares": np.square(values).sum(axis=0)}


def pooled_normalisation(moments: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, int]:
    """The mean and (population) variance of the union of the sites' windows, from their moments alone."""
    n = sum(int(m["n"]) for m in moments)
    if n == 0:
        raise ValueError("no site has training windows")
    total = np.sum([np.asarray(m["sum"], np.float64) for m in moments], axis=0)
    squares = np.sum([np.asarray(m["sum_squares"], np.float64) for m in moments], axis=0)
    mean = total / n
    variance = np.maximum(squares / n - np.square(mean), 0.0)
    return mean, variance, n


def histogram_edges(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """``[features, HISTOGRAM_BINS + 1]`` bin edges around the pooled mean (a constant feature gets unit width)."""
    std = np.sqrt(np.asarray(variance, np.float64))
    std = np.where(std > 0, std, 1.0)
    steps = np.linspace(-HISTOGRAM_SPAN_STD, HISTOGRAM_SPAN_STD, HISTOGRAM_BINS + 1)
    return np.asarray(mean, np.float64)[:, None] + std[:, None] * steps[None, :]


def feature_histograms(features: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[features, HISTOGRAM_BINS + 2]`` int64 counts: below the first edge, each bin, above the last edge."""
    values = np.asarray(features, dtype=np.float64)
    counts = np.zeros((edges.shape[0], edges.shape[1] + 1), np.int64)
    for column in range(edges.shape[0]):
        index = np.searchsorted(edges[column], values[:, column], side="right")
        counts[column] = np.bincount(index, minlength=edges.shape[1] + 1)
    return counts


def _centres(row_edges: np.ndarray) -> np.ndarray:
    """Each bin's centre; the open bins at the ends stand one half bin width beyond the outer edges."""
    width = row_edges[1] - row_edges[0]
    return np.concatenate(
        [[row_edges[0] - width / 2], (row_edges[:-1] + row_edges[1:]) / 2, [row_edges[-1] + width / 2]]
    )


def histogram_samples(counts: np.ndarray, edges: np.ndarray, max_samples: int) -> dict[str, list[float]]:
    """Per feature, bin centres repeated in proportion to the counts: at most about ``max_samples`` values."""
    samples: dict[str, list[float]] = {}
    for column, name in enumerate(FEATURE_NAMES):
        row = counts[column].astype(np.float64)
        repeats = np.floor(row / max(row.sum(), 1.0) * max_samples + 0.5).astype(np.int64)
        samples[name] = [round(float(v), 6) for v in np.repeat(_centres(edges[column]), repeats)]
    return samples


def reference_from_histograms(
    counts: np.ndarray,
    edges: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
    *,
    per_site: dict[str, np.ndarray] | None = None,
    max_samples: int = MAX_SAMPLES_PER_FEATURE,
) -> dict[str, Any]:
    """The version's drift reference (``reference_stats.kind = "telemetry_features"``) from summed histograms.

    The drift service reads samples of each feature; here they are bin centres repeated in proportion to the
    sites' summed counts, at most ``max_samples`` per feature; ``sites`` holds each site's own samples the same
    way (the drift service compares a site with its own reference: sites differ). The summary's mean and std are
    the pooled moments' (exact); its percentiles are bin centres.
    """
    max_samples = min(max_samples, MAX_SAMPLES_PER_FEATURE)
    summary: dict[str, dict[str, float]] = {}
    for column, name in enumerate(FEATURE_NAMES):
        centres = _centres(edges[column])
        row = counts[column].astype(np.float64)
        cumulative = np.cumsum(row / max(row.sum(), 1.0))
        p05, p50, p95 = (
            float(centres[min(int(np.searchsorted(cumulative, q)), len(centres) - 1)]) for q in (0.05, 0.5, 0.95)
        )
        summary[name] = {
            "mean": float(mean[column]),
            "std": float(np.sqrt(variance[column])),
            "p05": p05,
            "p50": p50,
            "p95": p95,
        }
    return {
        "kind": REFERENCE_KIND,
        "n": int(counts[0].sum()) if len(counts) else 0,
        "feature_names": list(FEATURE_NAMES),
        "features": histogram_samples(counts, edges, max_samples),
        "summary": summary,
        "sites": {
            site: {"n": int(site_counts[0].sum()), "features": histogram_samples(site_counts, edges, max_samples)}
            for site, site_counts in sorted((per_site or {}).items())
        },
        "source": "federated-histograms",
    }
