"""Simulated machine sensors: plausible wear toward failure, per-site differences and a settable change.

docs/telemetry.md ("The simulated sensors"). Deterministic for a seed and fast (numpy over a site's machines,
one time step at a time, no MQTT): ``edgeloop device simulate --kind sensor`` publishes what
:class:`SensorFleet` generates, and tests, the bench and the demo fill a site's ``SiteHistory`` with
:func:`fill_history` in a fraction of a second.

Each machine has a wear state in [0, 1). Every reading it grows by a random (gamma-distributed) step, larger under
load and for machines that wear faster. Its effect on the signals grows steeply with wear (``damage``, near 0 for
most of a machine's life, 1 at failure): bearing temperature and vibration rise, current rises, outlet pressure
drops and rpm dips. When wear reaches 1 the machine fails (that reading carries ``machine_event: "failure"``),
stays down for a while (no readings), and comes back repaired with a ``"maintenance"`` reading and fresh wear.
Now and then a machine is serviced before it fails (a ``"maintenance"`` reading that also resets wear).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np
from edgeloop_common.telemetry.history import SiteHistory


@dataclass(frozen=True)
class MachineType:
    """A kind of machine: its signals at rest wear and half load."""

    vibration_mm_s: float
    current_a: float
    pressure_bar: float
    rpm: float


MACHINE_TYPES: dict[str, MachineType] = {
    "pump": MachineType(vibration_mm_s=1.8, current_a=12.0, pressure_bar=5.0, rpm=1480.0),
    "compressor": MachineType(vibration_mm_s=2.6, current_a=22.0, pressure_bar=8.0, rpm=2950.0),
    "fan": MachineType(vibration_mm_s=1.2, current_a=6.0, pressure_bar=1.2, rpm=960.0),
}


@dataclass(frozen=True)
class SiteProfile:
    """What makes a site's machines differ from another site's (sites are not identically distributed)."""

    ambient_c: float
    load: float  # mean load, 0..1
    machine_mix: dict[str, float]  # machine type -> share of the site's machines
    mean_life: float = 600.0  # readings from new to failure at load 0.6 (a machine's own pace varies around it)


PROFILES: dict[str, SiteProfile] = {
    "temperate": SiteProfile(ambient_c=20.0, load=0.6, machine_mix={"pump": 0.7, "compressor": 0.3}),
    "hot": SiteProfile(ambient_c=32.0, load=0.75, machine_mix={"pump": 0.4, "compressor": 0.4, "fan": 0.2}),
    "cold": SiteProfile(ambient_c=10.0, load=0.45, machine_mix={"fan": 0.5, "pump": 0.5}, mean_life=800.0),
}

CHANGES: tuple[str, ...] = ("recalibrated-temperature", "new-machine-type")
TEMPERATURE_OFFSET_C = 6.0  # a recalibrated sensor reads this much warmer
DOWNTIME_READINGS = 20  # readings a failed machine is down before its repair
SERVICE_PROBABILITY = 1 / 3000  # per reading: a machine is serviced before it fails
MISSING_PROBABILITY = 0.002  # per signal and reading: a sensor skips a value


class SensorRecord(NamedTuple):
    """One reading of one machine, as the device publishes it."""

    device_id: str
    measured_at: datetime
    readings: dict[str, float]
    machine_event: str | None


def _site_seed(site_id: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(site_id.encode())])


def device_names(site_id: str, devices: int | Sequence[str]) -> list[str]:
    if isinstance(devices, int):
        return [f"{site_id}-m{index:03d}" for index in range(devices)]
    return list(devices)


@dataclass
class SensorFleet:
    """A site's machines, one time step (one reading each) at a time."""

    site_id: str
    devices: int | Sequence[str]
    seed: int = 0
    profile: str | SiteProfile = "temperate"
    change: str | None = None
    change_at: int | None = None  # the change applies from this step on (None: never)
    step_index: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.change is not None and self.change not in CHANGES:
            raise ValueError(f"change must be one of {', '.join(CHANGES)}, got {self.change!r}")
        site = PROFILES[self.profile] if isinstance(self.profile, str) else self.profile
        self.site = site
        self.names = device_names(self.site_id, self.devices)
        n = len(self.names)
        rng = self.rng = _site_seed(self.site_id, self.seed)
        kinds = list(site.machine_mix)
        shares = np.array([site.machine_mix[kind] for kind in kinds], dtype=np.float64)
        self.kinds = [kinds[i] for i in rng.choice(len(kinds), size=n, p=shares / shares.sum())]
        types = [MACHINE_TYPES[kind] for kind in self.kinds]
        self.base_vibration = np.array([t.vibration_mm_s for t in types]) * rng.normal(1.0, 0.08, n)
        self.base_current = np.array([t.current_a for t in types]) * rng.normal(1.0, 0.05, n)
        self.base_pressure = np.array([t.pressure_bar for t in types]) * rng.normal(1.0, 0.03, n)
        self.base_rpm = np.array([t.rpm for t in types])
        self.base_load = np.clip(rng.normal(site.load, 0.1, n), 0.15, 0.95)
        self.pace = rng.lognormal(0.0, 0.3, n)  # some machines wear faster than others
        self.load = self.base_load.copy()
        self.wear = rng.uniform(0.0, 0.8, n)  # machines of every age, so failures come early in a short run
        self.down = np.zeros(n, dtype=np.int64)  # readings left of a failed machine's downtime

    def _damage(self) -> np.ndarray:
        # Steep in wear: invisible for most of a life, obvious in its last tenth (where the horizon is).
        return np.expm1(4.0 * np.clip(self.wear, 0.0, 1.0)) / math.expm1(4.0)

    def step(self, measured_at: datetime) -> list[SensorRecord]:
        """Advance every machine by one reading; the readings of the machines that are running."""
        rng, n = self.rng, len(self.names)
        changed = self.change_at is not None and self.step_index >= self.change_at
        self.step_index += 1
        # Load wanders around each machine's usual load (AR(1)).
        self.load = np.clip(self.base_load + 0.9 * (self.load - self.base_load) + rng.normal(0.0, 0.04, n), 0.05, 1.0)
        mean_step = self.pace * (0.4 + self.load) / (1.0 * self.site.mean_life)
        self.wear = self.wear + rng.gamma(2.0, mean_step / 2.0)
        damage = self._damage()
        load = self.load
        temperature = self.site.ambient_c + 25.0 * load + 18.0 * damage + rng.normal(0.0, 0.8, n)
        vibration = self.base_vibration * (0.8 + 0.4 * load) + 6.0 * damage + np.abs(rng.normal(0.0, 0.15, n))
        current = self.base_current * (0.4 + 0.6 * load) * (1.0 + 0.15 * damage) + rng.normal(0.0, 0.2, n)
        pressure = self.base_pressure * (0.85 + 0.15 * load) * (1.0 - 0.25 * damage**2)
        pressure = pressure + rng.normal(0.0, 0.03, n) * self.base_pressure
        dips = rng.random(n) < 0.02 + 0.2 * damage  # rpm dips: a slipping belt, a sticking bearing
        rpm = self.base_rpm * (1.0 - 0.02 * load - 0.05 * damage - dips * rng.uniform(0.01, 0.06, n))
        rpm = rpm + rng.normal(0.0, 3.0, n)
        if changed and self.change == "recalibrated-temperature":
            temperature = temperature + TEMPERATURE_OFFSET_C
        elif changed and self.change == "new-machine-type":
            vibration = vibration * 1.6 + 1.0
            current = current * 1.3
        missing = rng.random((n, 5)) < MISSING_PROBABILITY
        serviced = rng.random(n) < SERVICE_PROBABILITY
        signals = np.stack([temperature, vibration, current, pressure, rpm], axis=1)
        names = ("temperature_c", "vibration_mm_s", "current_a", "pressure_bar", "rpm")
        records: list[SensorRecord] = []
        for i, device in enumerate(self.names):
            if self.down[i] > 0:
                self.down[i] -= 1
                if self.down[i] > 0:
                    continue
                self.wear[i] = rng.uniform(0.0, 0.1)  # repaired: this reading is the machine's first again
                event: str | None = "maintenance"
            elif self.wear[i] >= 1.0:
                self.down[i] = DOWNTIME_READINGS
                event = "failure"
            elif serviced[i]:
                self.wear[i] = rng.uniform(0.0, 0.1)
                event = "maintenance"
            else:
                event = None
            readings = {
                name: round(float(value), 3 if name != "rpm" else 1)
                for name, value, skip in zip(names, signals[i], missing[i], strict=True)
                if not skip or event is not None  # a labelled reading is always complete
            }
            records.append(SensorRecord(device, measured_at, readings, event))
        return records


def iterate_site(
    site_id: str,
    devices: int | Sequence[str],
    readings_per_device: int,
    *,
    seed: int = 0,
    profile: str | SiteProfile = "temperate",
    change: str | None = None,
    change_at: int | None = None,
    start: datetime | None = None,
    interval_s: float = 1.0,
) -> Iterator[SensorRecord]:
    """The site's readings, time step by time step (every running machine once a step)."""
    fleet = SensorFleet(site_id, devices, seed=seed, profile=profile, change=change, change_at=change_at)
    origin = start or datetime(2026, 1, 1, tzinfo=UTC)
    for index in range(readings_per_device):
        yield from fleet.step(origin + timedelta(seconds=index * interval_s))


def generate_site_history(
    site_id: str,
    devices: int | Sequence[str],
    readings_per_device: int,
    *,
    seed: int = 0,
    profile: str | SiteProfile = "temperate",
    change: str | None = None,
    change_at: int | None = None,
    start: datetime | None = None,
    interval_s: float = 1.0,
) -> list[SensorRecord]:
    """``readings_per_device`` time steps of a site's machines: ``(device_id, measured_at, readings, event)``.

    A failed machine is silent during its downtime, so it has fewer readings than steps.
    """
    return list(
        iterate_site(
            site_id,
            devices,
            readings_per_device,
            seed=seed,
            profile=profile,
            change=change,
            change_at=change_at,
            start=start,
            interval_s=interval_s,
        )
    )


def fill_history(
    history: SiteHistory,
    site_id: str,
    devices: int | Sequence[str],
    readings_per_device: int,
    *,
    seed: int = 0,
    profile: str | SiteProfile = "temperate",
    change: str | None = None,
    change_at: int | None = None,
    start: datetime | None = None,
) -> int:
    """Append a generated site history to ``history`` (one transaction); the number of readings."""
    records = iterate_site(
        site_id,
        devices,
        readings_per_device,
        seed=seed,
        profile=profile,
        change=change,
        change_at=change_at,
        start=start,
    )
    return int(
        history.append_many(
            (site_id, record.device_id, record.measured_at, record.readings, record.machine_event) for record in records
        )
    )
