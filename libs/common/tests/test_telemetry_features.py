"""Windowed features of sensor readings (docs/telemetry.md, "Features"): the maths, the rolling windows, the labels."""

from __future__ import annotations

import numpy as np
import pytest
from edgeloop_common.telemetry.features import (
    FEATURE_NAMES,
    SIGNALS,
    DeviceWindows,
    Reading,
    features_dict,
    labelled_windows,
    window_features,
)


def reading(value: float, **overrides: object) -> dict[str, object]:
    """Every signal at ``value`` (rpm at 100 x value), with overrides."""
    values: dict[str, object] = {signal: value for signal in SIGNALS}
    values["rpm"] = 100 * value
    values.update(overrides)
    return values


def test_window_features_are_mean_std_min_max_and_least_squares_slope() -> None:
    rng = np.random.default_rng(3)
    window = rng.normal(size=(30, len(SIGNALS))) + np.arange(30)[:, None] * np.array([0.5, -1.0, 0.0, 2.0, 0.1])
    figures = features_dict(window_features(window))
    assert list(figures) == list(FEATURE_NAMES) and len(FEATURE_NAMES) == 25
    for column, signal in enumerate(SIGNALS):
        values = window[:, column]
        slope = np.polyfit(np.arange(30), values, 1)[0]  # an independent least-squares fit
        assert figures[f"{signal}_mean"] == pytest.approx(values.mean(), rel=1e-5, abs=1e-5)
        assert figures[f"{signal}_std"] == pytest.approx(values.std(), rel=1e-5)  # population std
        assert figures[f"{signal}_min"] == pytest.approx(values.min(), rel=1e-6)
        assert figures[f"{signal}_max"] == pytest.approx(values.max(), rel=1e-6)
        assert figures[f"{signal}_slope"] == pytest.approx(slope, rel=1e-4, abs=1e-5)
    assert window_features(window).dtype == np.float32


def test_a_straight_line_has_its_slope_and_no_spread_around_its_mean() -> None:
    line = np.tile(np.arange(10, dtype=np.float64)[:, None] * 3.0 + 7.0, (1, len(SIGNALS)))
    figures = features_dict(window_features(line))
    assert figures["vibration_mm_s_slope"] == pytest.approx(3.0)
    assert figures["vibration_mm_s_mean"] == pytest.approx(7.0 + 13.5)
    constant = features_dict(window_features(np.ones((5, len(SIGNALS)))))
    assert constant["rpm_std"] == 0.0 and constant["rpm_slope"] == 0.0


@pytest.mark.parametrize("shape", [(1, 5), (30, 4), (30,), (2, 6)])
def test_a_window_of_the_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="window is"):
        window_features(np.zeros(shape))


def test_a_window_is_scored_once_full_then_every_stride() -> None:
    windows = DeviceWindows(4, stride=3)
    scored = [windows.add("s", "d", reading(float(i))) is not None for i in range(12)]
    # Full at the 4th reading (index 3), then every 3rd: 6, 9.
    assert [i for i, yes in enumerate(scored) if yes] == [3, 6, 9]
    features = DeviceWindows(4).add  # a fresh one to check the window's content
    for i in range(3):
        assert features("s", "d", reading(float(i))) is None
    last = features("s", "d", reading(3.0))
    assert last is not None
    assert features_dict(last)["temperature_c_mean"] == pytest.approx(1.5)
    nxt = features("s", "d", reading(10.0))  # the window rolls: readings 1, 2, 3, 10
    assert nxt is not None and features_dict(nxt)["temperature_c_min"] == pytest.approx(1.0)


def test_devices_have_their_own_windows_and_the_least_recent_is_evicted() -> None:
    windows = DeviceWindows(2, max_devices=2)
    windows.add("s", "a", reading(1.0))
    windows.add("s", "b", reading(1.0))
    windows.add("s", "a", reading(2.0))  # a is now the most recently heard
    windows.add("s", "c", reading(1.0))  # over the limit: b (least recent) is forgotten
    assert len(windows) == 2
    assert windows.add("s", "a", reading(3.0)) is not None  # a kept its window
    assert windows.add("s", "b", reading(2.0)) is None  # b starts again
    assert windows.add("t", "a", reading(2.0)) is None  # another site's device "a" is another device


def test_a_missing_or_non_numeric_value_holds_the_last_one() -> None:
    windows = DeviceWindows(3)
    assert windows.add("s", "d", reading(1.0)) is None
    assert windows.add("s", "d", {k: v for k, v in reading(2.0).items() if k != "pressure_bar"}) is None
    features = windows.add("s", "d", reading(4.0, pressure_bar="n/a", rpm=float("nan"), current_a=True))
    assert features is not None
    figures = features_dict(features)
    assert figures["pressure_bar_max"] == pytest.approx(1.0)  # held at 1.0 for all three readings
    assert figures["rpm_max"] == pytest.approx(200.0)  # NaN held the previous 200
    assert figures["current_a_mean"] == pytest.approx((1.0 + 2.0 + 2.0) / 3)  # a boolean is not a number
    assert figures["temperature_c_mean"] == pytest.approx(7.0 / 3)


def test_no_window_until_every_signal_has_a_value() -> None:
    windows = DeviceWindows(2)
    partial = {"temperature_c": 1.0}
    assert windows.add("s", "d", partial) is None
    assert windows.add("s", "d", partial) is None
    assert windows.add("s", "d", reading(1.0)) is None  # the first complete row
    assert windows.add("s", "d", reading(1.0)) is not None


def test_forget_starts_a_device_again() -> None:
    windows = DeviceWindows(2)
    windows.add("s", "d", reading(1.0))
    windows.forget("s", "d")
    assert windows.add("s", "d", reading(1.0)) is None


def history(length: int, events: dict[int, str]) -> list[Reading]:
    return [Reading(reading(float(i)), events.get(i)) for i in range(length)]


def test_windows_before_a_failure_within_the_horizon_are_positive() -> None:
    # Window 5, horizon 10, stride 1: a failure at reading 40.
    windows = labelled_windows(history(60, {40: "failure"}), window=5, horizon=10, stride=1)
    ends = [round(features_dict(row)["temperature_c_max"]) for row in windows.features]
    by_end = dict(zip(ends, windows.labels.tolist(), strict=True))
    assert by_end[29] == 0.0  # the failure is 11 readings ahead: beyond the horizon
    assert by_end[30] == 1.0 and by_end[39] == 1.0  # 10 .. 1 readings ahead
    assert 40 not in by_end  # the failing reading itself ends no window
    # After the failure a new window needs 5 readings (41..45); from end 50 on the horizon runs past the end (60).
    assert sorted(end for end in ends if end > 40) == [45, 46, 47, 48, 49]
    assert windows.labels.sum() == 10


def test_a_window_never_spans_a_maintenance_or_a_failure() -> None:
    windows = labelled_windows(history(50, {20: "maintenance"}), window=5, horizon=10, stride=1)
    starts = [round(features_dict(row)["temperature_c_min"]) for row in windows.features]
    ends = [round(features_dict(row)["temperature_c_max"]) for row in windows.features]
    assert not any(start <= 20 <= end for start, end in zip(starts, ends, strict=True))
    assert min(s for s in starts if s > 20) == 21  # the first window after the maintenance starts after it
    assert windows.labels.sum() == 0  # a maintenance is no failure


def test_windows_whose_horizon_is_not_over_are_left_out_unless_a_failure_is_seen() -> None:
    plain = labelled_windows(history(30, {}), window=5, horizon=10, stride=1)
    assert round(features_dict(plain.features[-1])["temperature_c_max"]) == 19  # 19 + 10 < 30
    failing = labelled_windows(history(30, {27: "failure"}), window=5, horizon=10, stride=1)
    assert failing.labels[-1] == 1.0
    assert round(features_dict(failing.features[-1])["temperature_c_max"]) == 26


def test_stride_thins_the_windows_and_an_empty_history_has_none() -> None:
    dense = labelled_windows(history(100, {}), window=5, horizon=10, stride=1)
    thin = labelled_windows(history(100, {}), window=5, horizon=10, stride=5)
    assert len(thin.labels) == pytest.approx(len(dense.labels) / 5, abs=1)
    empty = labelled_windows([], window=5, horizon=10)
    assert empty.features.shape == (0, len(FEATURE_NAMES)) and empty.labels.shape == (0,)
