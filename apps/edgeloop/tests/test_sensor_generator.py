"""The simulated sensors (docs/telemetry.md, "The simulated sensors"): deterministic, plausible, labelled."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from edgeloop.sensors import (
    DOWNTIME_READINGS,
    TEMPERATURE_OFFSET_C,
    SensorFleet,
    fill_history,
    generate_site_history,
)
from edgeloop_common.telemetry.features import SIGNALS, labelled_windows
from edgeloop_common.telemetry.history import SiteHistory


def by_device(records: list) -> dict[str, list]:  # type: ignore[type-arg]
    devices: dict[str, list] = {}  # type: ignore[type-arg]
    for record in records:
        devices.setdefault(record.device_id, []).append(record)
    return devices


def signal(records: list, name: str) -> np.ndarray:  # type: ignore[type-arg]
    return np.array([r.readings[name] for r in records if name in r.readings])


def test_the_same_seed_gives_the_same_history_and_another_seed_another() -> None:
    first = generate_site_history("site-a", 4, 300, seed=5)
    assert first == generate_site_history("site-a", 4, 300, seed=5)
    assert first != generate_site_history("site-a", 4, 300, seed=6)
    assert first != generate_site_history("site-b", 4, 300, seed=5)  # the site is part of the seed


def test_machines_fail_then_are_down_then_come_back_maintained() -> None:
    records = generate_site_history("site-a", 8, 2000, seed=1)
    failures = [r for r in records if r.machine_event == "failure"]
    assert len(failures) >= 8  # about one failure per machine per ~600 readings at the temperate load
    for history in by_device(records).values():
        events = [(i, r.machine_event) for i, r in enumerate(history) if r.machine_event]
        for (index, event), following in itertools.pairwise(events):
            if event == "failure":
                assert following == (index + 1, "maintenance")  # the next reading it sends: repaired
                gap = (history[index + 1].measured_at - history[index].measured_at).total_seconds()
                assert gap == DOWNTIME_READINGS  # silent while down (one reading a second)
        assert set(history[0].readings) == set(SIGNALS)


def test_signals_degrade_before_a_failure() -> None:
    records = generate_site_history("site-a", 12, 3000, seed=2)
    early: dict[str, list[float]] = {name: [] for name in SIGNALS}
    late: dict[str, list[float]] = {name: [] for name in SIGNALS}
    for history in by_device(records).values():
        starts = [0] + [i for i, r in enumerate(history) if r.machine_event == "maintenance"]
        for i, record in enumerate(history):
            if record.machine_event != "failure":
                continue
            start = max(s for s in starts if s < i)
            if i - start < 200:
                continue
            for name in SIGNALS:
                late[name].extend(signal(history[i - 10 : i], name))
                early[name].extend(signal(history[start + 5 : start + 55], name))
    assert late["vibration_mm_s"], "no complete life in the history"
    mean = {name: (np.mean(early[name]), np.mean(late[name])) for name in SIGNALS}
    assert mean["vibration_mm_s"][1] > mean["vibration_mm_s"][0] + 3.0  # mm/s: into ISO 10816's "unacceptable"
    assert mean["temperature_c"][1] > mean["temperature_c"][0] + 10.0
    assert mean["current_a"][1] > mean["current_a"][0]
    assert mean["pressure_bar"][1] < mean["pressure_bar"][0]
    assert mean["rpm"][1] < mean["rpm"][0]


def test_sites_differ() -> None:
    temperate = generate_site_history("site-a", 20, 200, seed=0, profile="temperate")
    hot = generate_site_history("site-a", 20, 200, seed=0, profile="hot")
    cold = generate_site_history("site-a", 20, 200, seed=0, profile="cold")
    temperatures = [signal(h, "temperature_c").mean() for h in (cold, temperate, hot)]
    assert temperatures == sorted(temperatures) and temperatures[2] - temperatures[0] > 15
    fans = {r.device_id for r in cold if r.readings.get("rpm", 2000) < 1100}
    assert fans and not {r.device_id for r in temperate if r.readings.get("rpm", 2000) < 1100}  # no fans there


@pytest.mark.parametrize("change", ["recalibrated-temperature", "new-machine-type"])
def test_a_change_applies_from_its_reading_on(change: str) -> None:
    plain = generate_site_history("site-a", 6, 400, seed=3)
    changed = generate_site_history("site-a", 6, 400, seed=3, change=change, change_at=200)
    before = [r for r in changed if (r.measured_at - changed[0].measured_at).total_seconds() < 200]
    assert before == plain[: len(before)]  # identical up to the change
    after_plain = plain[len(before) :]
    after = changed[len(before) :]
    if change == "recalibrated-temperature":
        shift = signal(after, "temperature_c").mean() - signal(after_plain, "temperature_c").mean()
        assert shift == pytest.approx(TEMPERATURE_OFFSET_C, abs=0.2)
        assert signal(after, "vibration_mm_s").mean() == pytest.approx(signal(after_plain, "vibration_mm_s").mean())
    else:
        assert signal(after, "vibration_mm_s").mean() > 1.5 * signal(after_plain, "vibration_mm_s").mean()
        assert signal(after, "current_a").mean() > 1.2 * signal(after_plain, "current_a").mean()


def test_unknown_change_is_refused() -> None:
    with pytest.raises(ValueError, match="change must be one of"):
        SensorFleet("site-a", 2, change="earthquake")


def test_fill_history_is_fast_and_gives_labelled_windows(tmp_path: Path) -> None:
    history = SiteHistory(tmp_path / "site-a.db")
    started = time.perf_counter()
    count = fill_history(history, "site-a", 10, 1500, seed=4, profile="hot")
    windows = history.training_windows()
    elapsed = time.perf_counter() - started
    assert count == history.count() > 14_000
    assert len(history.devices()) == 10
    rate = float(windows.labels.mean())
    assert 0.03 < rate < 0.25, rate  # failures are rare, but there are some in every history
    assert elapsed < 15, f"{elapsed:.1f}s to fill and window 15,000 readings"
    device = sorted(history.devices())[0]
    assert len(labelled_windows(list(history.device_history(*device))).labels) > 0
    history.close()
