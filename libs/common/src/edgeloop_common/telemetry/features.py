"""Per-device windowed features of sensor readings: what the failure model sees (docs/telemetry.md, "Features").

A window is a device's last ``WINDOW_READINGS`` readings. For each signal in ``SIGNALS`` it gives five figures:
``mean``, ``std`` (population), ``min``, ``max`` and ``slope`` (least-squares change per reading), so a window
becomes ``len(FEATURE_NAMES)`` float32 numbers in the order of ``FEATURE_NAMES``. Windows count readings, not
seconds: a device's clock and rate do not change what the model sees, only how far ahead the horizon reaches.

The label of a window (for training) is whether the machine failed within the ``HORIZON_READINGS`` readings that
follow it: ``labelled_windows``.

A reading that lacks a signal, or carries it as something other than a finite number, holds the signal's last
value (a sensor that skipped one reading); a window is scored only once every signal has a value.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# The simulator's sensors (``edgeloop device simulate --kind sensor``) and their units.
SIGNALS: tuple[str, ...] = ("temperature_c", "vibration_mm_s", "current_a", "pressure_bar", "rpm")
STATISTICS: tuple[str, ...] = ("mean", "std", "min", "max", "slope")
FEATURE_NAMES: tuple[str, ...] = tuple(f"{signal}_{stat}" for signal in SIGNALS for stat in STATISTICS)
WINDOW_READINGS = 30
HORIZON_READINGS = 60


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def window_features(window: np.ndarray) -> np.ndarray:
    """Features of a ``(readings, len(SIGNALS))`` array of values: ``(len(FEATURE_NAMES),)`` float32."""
    values = np.asarray(window, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(SIGNALS) or values.shape[0] < 2:
        raise ValueError(f"a window is (readings >= 2, {len(SIGNALS)}) values, got {values.shape}")
    steps = np.arange(values.shape[0], dtype=np.float64)
    centred = steps - steps.mean()
    slope = (centred[:, None] * (values - values.mean(axis=0))).sum(axis=0) / (centred**2).sum()
    figures = np.stack([values.mean(axis=0), values.std(axis=0), values.min(axis=0), values.max(axis=0), slope])
    return figures.T.reshape(-1).astype(np.float32)  # signal-major, as FEATURE_NAMES


def features_dict(features: np.ndarray) -> dict[str, float]:
    return {name: float(value) for name, value in zip(FEATURE_NAMES, features, strict=True)}


class _DeviceWindow:
    __slots__ = ("last", "rows")

    def __init__(self, window: int) -> None:
        self.last: list[float | None] = [None] * len(SIGNALS)
        self.rows: deque[list[float]] = deque(maxlen=window)


class DeviceWindows:
    """Rolling windows of every device, for scoring readings as they arrive.

    ``add`` returns the device's features once its window is full (then on every ``stride``-th reading), else
    None. At most ``max_devices`` windows are kept; the least recently heard device is forgotten first (its
    window refills when it is heard again). Windows live in memory: after a restart each device's window
    refills over ``window`` readings before it is scored again.
    """

    def __init__(self, window: int = WINDOW_READINGS, *, stride: int = 1, max_devices: int = 100_000) -> None:
        if window < 2 or stride < 1 or max_devices < 1:
            raise ValueError("window >= 2, stride >= 1 and max_devices >= 1")
        self.window = window
        self.stride = stride
        self.max_devices = max_devices
        self._devices: OrderedDict[tuple[str, str], _DeviceWindow] = OrderedDict()
        self._since_scored: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def add(self, site_id: str, device_id: str, readings: Mapping[str, object]) -> np.ndarray | None:
        key = (site_id, device_id)
        state = self._devices.get(key)
        if state is None:
            state = self._devices[key] = _DeviceWindow(self.window)
            self._since_scored[key] = self.stride - 1  # the first full window is scored
            if len(self._devices) > self.max_devices:
                forgotten, _ = self._devices.popitem(last=False)
                self._since_scored.pop(forgotten, None)
        else:
            self._devices.move_to_end(key)
        for index, signal in enumerate(SIGNALS):
            value = _number(readings.get(signal))
            if value is not None:
                state.last[index] = value
        if any(value is None for value in state.last):
            return None
        state.rows.append([value for value in state.last if value is not None])
        if len(state.rows) < self.window:
            return None
        self._since_scored[key] += 1
        if self._since_scored[key] < self.stride:
            return None
        self._since_scored[key] = 0
        return window_features(np.array(state.rows))

    def forget(self, site_id: str, device_id: str) -> None:
        """Drop a device's window (after maintenance the machine is a new one: its old readings mislead)."""
        self._devices.pop((site_id, device_id), None)
        self._since_scored.pop((site_id, device_id), None)


@dataclass(frozen=True)
class Reading:
    """One reading of a device's history: its values and what happened to the machine with it."""

    readings: Mapping[str, object]
    machine_event: str | None = None  # "failure" | "maintenance" | None


@dataclass(frozen=True)
class LabelledWindows:
    features: np.ndarray  # (n, len(FEATURE_NAMES)) float32
    labels: np.ndarray  # (n,) float32: 1.0 when the machine failed within the horizon after the window


def labelled_windows(
    history: Sequence[Reading],
    *,
    window: int = WINDOW_READINGS,
    horizon: int = HORIZON_READINGS,
    stride: int = 5,
) -> LabelledWindows:
    """Training windows of one device's history (in order), labelled by failures within ``horizon`` readings.

    A window never spans a failure or a maintenance (the machine after it is another machine), and the windows
    at a history's end whose horizon is not yet over are left out (their label is not known yet), unless a
    failure inside the part seen already makes it 1.
    """
    rows: list[np.ndarray] = []
    labels: list[float] = []
    events = [entry.machine_event for entry in history]
    failures = np.array([event == "failure" for event in events], dtype=bool)
    windows = DeviceWindows(window, stride=stride, max_devices=1)
    for index, entry in enumerate(history):
        features = windows.add("_", "_", entry.readings)
        if entry.machine_event is not None:
            windows.forget("_", "_")  # the next window starts after the failure or the maintenance
        if features is None or entry.machine_event is not None:
            continue
        ahead = failures[index + 1 : index + 1 + horizon]
        if ahead.any():
            labels.append(1.0)
        elif index + horizon < len(history):
            labels.append(0.0)
        else:
            continue  # the horizon runs past the history's end: the label is not known yet
        rows.append(features)
    if not rows:
        return LabelledWindows(np.zeros((0, len(FEATURE_NAMES)), np.float32), np.zeros((0,), np.float32))
    return LabelledWindows(np.stack(rows), np.array(labels, dtype=np.float32))


def concatenate(parts: Iterable[LabelledWindows]) -> LabelledWindows:
    parts = list(parts)
    if not parts:
        return LabelledWindows(np.zeros((0, len(FEATURE_NAMES)), np.float32), np.zeros((0,), np.float32))
    return LabelledWindows(
        np.concatenate([part.features for part in parts]), np.concatenate([part.labels for part in parts])
    )
