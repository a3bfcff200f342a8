"""``edgeloop demo --telemetry``: sensors, alerts, drift, federated retraining and rollout, in standalone mode.

One process runs the services around one in-process event bus, with SQLite and local folders under
``<state>/telemetry/`` (wiped at each run) and the local Mosquitto (else the embedded broker), as the image demo
does; each site's federated client is a process of its own, as a site would run it. docs/telemetry.md, "The demo".

1. Each simulated site (``edgeloop.sensors``: its profile, its machines) holds a history of readings in its own
   ``SiteHistory``. A first version of the failure model is trained centrally on those histories
   (:func:`edgeloop.train_telemetry.train_centralised`, what ``edgeloop train --telemetry --register`` does),
   registered and promoted through the registry's API; the deployer rolls it out to every site.
2. The sites' machines publish readings over MQTT (``dt/edgeloop/{site}/{device}/telemetry``,
   :class:`edgeloop.device.SensorSimulator`); ingest validates them, the gateway scores each device's window with
   the served version and alerts the device on ``.../alert``: each alert prints as the device gets it.
3. Once the drift service has compared every site's windows with the version's reference (no alarm), one site
   changes (the simulator's ``change``: a new machine type, or recalibrated temperature sensors); the drift
   service raises drift for that site and asks for a training (``TrainingRequested``).
4. The federated service takes the request and opens a Flower server; each site joins with
   ``edgeloop federated client --site S --history PATH --server HOST:PORT --once`` (a process per site) and trains
   on its own history, which now holds readings from after the change. Each round, the registered version with its
   lineage and the promotion gate's verdict print.
5. The deployer rolls the promoted version out; the sites' new readings are scored by it.

Every figure printed comes from the services (their events on the bus, their HTTP APIs) or from the sensors'
acknowledgements; a step that does not happen ends the demo with :class:`TelemetryDemoError`, which says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from edgeloop_common.telemetry.history import SiteHistory
from edgeloop_common.telemetry.model import MODEL_NAME

from edgeloop.demo_loop import wait_until
from edgeloop.device import SensorAlert, SensorSimulator, SensorSimulatorConfig
from edgeloop.local_mqtt import LocalBroker, start_local_broker
from edgeloop.narration import BusNarrator, Echo, Handler
from edgeloop.processes import any_free_port
from edgeloop.sensors import CHANGES, PROFILES, TEMPERATURE_OFFSET_C, SensorFleet, SensorRecord
from edgeloop.system import DOCUMENTED_PORTS, FEDERATED, System, SystemConfig

T = TypeVar("T")

DEFAULT_CHANGE = "new-machine-type"
CHANGE_WORDS = {
    "new-machine-type": "a new machine type (more vibration and current than the machines it replaces)",
    "recalibrated-temperature": f"its temperature sensors recalibrated (they read {TEMPERATURE_OFFSET_C:g} °C warmer)",
}
SERVICES = ("registry", "ingest", "inference-gateway", "drift", "deployer", FEDERATED)
# The longest a phase of the sensors may take. Only a safety net: the sensors wait for the gateway to catch up, so
# a phase lasts as long as the pipeline takes on this machine (minutes on 2 cores shared with a test suite).
PHASE_TIMEOUT_S = 1800.0


class TelemetryDemoError(RuntimeError):
    """A step of the telemetry demo did not happen; the message says which and why."""


@dataclass(frozen=True)
class TelemetryScenario:
    """Sizes of the demo; the defaults take about three minutes on 2 cores."""

    sites: int = 3
    # Machines per site. The drift service's window (its default 200 sampled windows, every 30th window of a
    # machine so that they do not overlap) then spans 250 readings of each. A trial with a window of 60 over 12
    # machines (150 readings of each) alarmed before any change: a machine's samples share its wear, so a window of
    # few readings per machine is not the independent sample PSI and KS assume.
    devices: int = 24
    history_readings: int = 1200  # readings per machine each site holds before the demo (the first version's data)
    # Readings per second of each machine (far faster than a real sensor): 432 a second from 72 machines, about
    # what ingest -> gateway -> drift take in one process on 2 busy cores; faster only queues them.
    rate: float = 6.0
    change: str = DEFAULT_CHANGE  # edgeloop.sensors.CHANGES
    change_site: int = 2  # the change happens at the site of this number (1-based)
    first_epochs: int = 20  # the first version, trained centrally
    rounds: int = 2  # the federated retraining
    local_epochs: int = 3
    checks_before_change: int = 2  # the drift service's checks of every site before the change
    max_readings_to_drift: int = 600  # scored readings per machine after the change: no alarm by then fails
    readings_after_drift: int = 150  # the sites keep recording this many readings per machine after the alarm
    readings_after_rollout: int = 60  # readings per machine scored by the new version
    alerts_shown: int = 4  # alerts printed one by one per phase (all are counted)
    scores_shown: int = 2  # readings per site printed once the new version serves
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.sites <= 8:
            raise ValueError(f"--sites must be between 2 (a federation) and 8 (a process each), got {self.sites}")
        if self.change not in CHANGES:
            raise ValueError(f"the sensors' change must be one of {', '.join(CHANGES)}, got {self.change!r}")
        if not 1 <= self.change_site <= self.sites:
            raise ValueError(f"the changed site must be one of the {self.sites} sites, got {self.change_site}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")

    def site_ids(self) -> list[str]:
        return [f"site-{chr(ord('a') + index)}" for index in range(self.sites)]

    def profile_of(self, index: int) -> str:
        """The sites differ: temperate, hot, cold, then again (``edgeloop.sensors.PROFILES``)."""
        profiles = list(PROFILES)
        return profiles[index % len(profiles)]


@dataclass
class RecordedFleet(SensorFleet):
    """A site's machines whose every reading the site also keeps in its ``SiteHistory``, as its edge agent would
    (docs/telemetry.md, "What stays where"): the federated client later trains on exactly what was published."""

    history: SiteHistory | None = None
    recorded: int = 0
    last_step_at: datetime | None = None  # when the newest readings were measured

    def step(self, measured_at: datetime) -> list[SensorRecord]:
        records = super().step(measured_at)
        self.last_step_at = measured_at
        if self.history is not None:
            self.recorded += self.history.append_many(
                (self.site_id, r.device_id, r.measured_at, r.readings, r.machine_event) for r in records
            )
        return records


@dataclass
class Site:
    site_id: str
    profile: str
    history_path: Path
    history: SiteHistory
    fleet: RecordedFleet
    change_from: int | None = None  # the fleet's step from which the change applies
    recorded_before_change: int = 0

    def describe_machines(self) -> str:
        kinds = Counter(self.fleet.kinds)
        return ", ".join(f"{count} {kind}{'s' if count > 1 else ''}" for kind, count in sorted(kinds.items()))


@dataclass(frozen=True)
class TelemetryOutcome:
    first_version: int
    new_version: int  # federated, promoted and serving every site
    drift_site: str


# -- the narrator ----------------------------------------------------------------------------------------------


class _Narrator(BusNarrator):
    """Prints each step as its event passes (on the bus, or at a device on MQTT) and counts what it saw."""

    group = "demo-telemetry-narrator"

    def __init__(self, echo: Echo, started: float, scenario: TelemetryScenario) -> None:
        super().__init__(echo, started)
        self.scenario = scenario
        self.phase = "before the change"
        self.alerts: Counter[tuple[str, str, int]] = Counter()  # (phase, site, version) -> alerts at the devices
        self.scored: Counter[tuple[str, str, int]] = Counter()  # (phase, site, version) -> readings scored
        self.newest_scored: datetime | None = None  # when the newest reading scored was measured
        self.scored_shown: list[Any] = []  # TelemetryScored of the new version, shown once it serves
        self.show_scores_of: int | None = None
        self.change: tuple[str, datetime] | None = None  # the changed site and when the change began
        self.scored_since_change = 0  # readings of the changed site measured after the change, scored
        self.scored_at_alarm: dict[str, int] = {}  # site -> scored_since_change when its first alarm came
        self.drift: list[tuple[str, Any]] = []  # (phase, DriftDetected)
        self.training_requests: list[Any] = []
        self.deployments: list[Any] = []
        self.changed = asyncio.Event()

    def handlers(self) -> list[tuple[type[Any], Handler]]:
        from edgeloop_common.events import (
            DeploymentUpdated,
            DriftDetected,
            ModelPromoted,
            ModelRegistered,
            TelemetryScored,
            TrainingRequested,
        )

        return [
            (TelemetryScored, self._scored),
            (DriftDetected, self._drift),
            (TrainingRequested, self._training),
            (ModelRegistered, self._registered),
            (ModelPromoted, self._promoted),
            (DeploymentUpdated, self._deployment),
        ]

    # -- at the devices (MQTT) --

    def alert(self, site: str, alert: SensorAlert) -> None:
        version = alert.payload.get("model_version")
        key = (self.phase, site, int(version) if isinstance(version, int) else -1)
        self.alerts[key] += 1
        if sum(count for (phase, _, _), count in self.alerts.items() if phase == self.phase) <= (
            self.scenario.alerts_shown
        ):
            self.say("alert", _alert_text(site, alert))

    def alerts_text(self, phase: str) -> str:
        by_site = Counter[str]()
        versions: set[int] = set()
        for (seen_in, site, version), count in self.alerts.items():
            if seen_in == phase:
                by_site[site] += count
                versions.add(version)
        total = sum(by_site.values())
        if not total:
            return f"no alert {phase}"
        sites = ", ".join(f"{site} {by_site[site]}" for site in self.scenario.site_ids())
        by = ", ".join(f"v{version}" for version in sorted(versions))
        return f"{total} alert{'s' if total > 1 else ''} {phase} ({sites}; from {by})"

    # -- on the bus --

    async def _scored(self, event: Any, context: Any) -> None:
        self.scored[(self.phase, event.site_id, event.model_version)] += 1
        if self.newest_scored is None or event.measured_at > self.newest_scored:
            self.newest_scored = event.measured_at
        if self.change is not None and event.site_id == self.change[0] and event.measured_at >= self.change[1]:
            self.scored_since_change += 1
        if event.model_version == self.show_scores_of:
            shown_here = sum(1 for shown in self.scored_shown if shown.site_id == event.site_id)
            if shown_here < self.scenario.scores_shown:
                self.scored_shown.append(event)
                self.say(
                    "gateway",
                    f"TelemetryScored {event.device_id} at {event.site_id}: failure probability "
                    f"{event.failure_probability:.3f} (threshold {event.threshold:.3f}, {event.model_name} "
                    f"v{event.model_version}, served by {event.served_by})",
                )

    async def _drift(self, event: Any, context: Any) -> None:
        self.drift.append((self.phase, event))
        if event.site_id not in self.scored_at_alarm:
            self.scored_at_alarm[event.site_id] = self.scored_since_change
            self.say(
                "drift",
                f"DriftDetected on {event.model_name} v{event.model_version} at {event.site_id}: {event.test} of "
                f"{event.feature} {event.statistic:.3g} > {event.threshold:.3g} (window of {event.window_size} "
                f"sampled windows, {self.phase})",
            )
        self.changed.set()

    async def _training(self, event: Any, context: Any) -> None:
        self.training_requests.append(event)
        self.say("drift", f"TrainingRequested for {event.model_name} ({event.reason} by {event.requested_by})")
        self.changed.set()

    async def _registered(self, event: Any, context: Any) -> None:
        metrics = event.metrics
        baseline = metrics.get("baseline") or {}
        versus = (
            f", production v{baseline['version']} {baseline['pr_auc']:.4f} on the same held-out windows"
            if "pr_auc" in baseline
            else ""
        )
        self.say(
            "registry",
            f"ModelRegistered {event.model_name} version {event.version}: PR-AUC {metrics.get('pr_auc', 0.0):.4f} "
            f"on held-out machines{versus}",
        )

    async def _promoted(self, event: Any, context: Any) -> None:
        self.say("registry", f"ModelPromoted {event.model_name} version {event.version} to {event.alias}")

    async def _deployment(self, event: Any, context: Any) -> None:
        self.deployments.append(event)
        self.changed.set()
        if event.phase in ("ready", "failed", "rolled_back"):
            self.say(
                "deployer",
                f"DeploymentUpdated {event.node_group}: {event.phase}, {event.model_name} version "
                f"{event.actual_version} ({event.reason})",
            )

    async def wait_deployed(self, version: int, sites: Iterable[str], timeout_s: float) -> None:
        """Until every site's node group is ready on ``version``; a failed rollout raises with its reason."""
        waiting = set(sites)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for event in self.deployments:
                        if event.node_group in waiting and event.desired_version == version:
                            if event.phase in ("failed", "rolled_back"):
                                raise TelemetryDemoError(
                                    f"the rollout of version {version} to {event.node_group} {event.phase}: "
                                    f"{event.reason}"
                                )
                            if event.phase == "ready" and event.actual_version == version:
                                waiting.discard(event.node_group)
                    if not waiting:
                        return
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise TelemetryDemoError(
                f"version {version} was not ready at {', '.join(sorted(waiting))} after {timeout_s:.0f} s"
            ) from None


def _alert_text(site: str, alert: SensorAlert) -> str:
    payload = alert.payload
    probability, threshold = payload.get("failure_probability"), payload.get("threshold")
    if isinstance(probability, int | float) and isinstance(threshold, int | float):
        model = f"{payload.get('model_name', '?')} v{payload.get('model_version', '?')}"
        return f"{alert.device} at {site}: failure probability {probability:.3f} >= {threshold:.3f} ({model})"
    return f"{alert.device} at {site}: {json.dumps(payload)[:200]}"


# -- the services ----------------------------------------------------------------------------------------------


@dataclass
class _Services:
    """The services of the demo in this process (:class:`edgeloop.system.System`) around one in-process bus."""

    scenario: TelemetryScenario
    home: Path
    broker: LocalBroker
    flower_address: str = field(default_factory=lambda: f"127.0.0.1:{any_free_port()}")
    system: System = field(init=False)

    def __post_init__(self) -> None:
        from edgeloop_common.bus.inprocess import InProcessBus

        scenario = self.scenario
        protocol = "5" if self.broker.kind == "mosquitto" else "3.1.1"  # the embedded broker speaks 3.1.1 only
        self.system = System(
            SystemConfig(
                model_name=MODEL_NAME,
                model_base=self.model_base,
                common=lambda service: self.common(),
                bus=InProcessBus(source="edgeloop-demo-telemetry"),
                ports=DOCUMENTED_PORTS,
                settings={
                    "ingest": {"mqtt_session_expiry_s": 60, "mqtt_protocol": protocol},
                    "inference-gateway": {"mqtt_protocol": protocol},
                    "drift": {"reference_retry_s": 1.0},  # its telemetry window and tests as documented
                    "deployer": {
                        "target": "local",
                        "node_groups": ",".join(scenario.site_ids()),
                        "rollout_timeout_s": 60,
                        "poll_interval_s": 0.25,
                    },
                    FEDERATED: {
                        "flower_address": self.flower_address,
                        "rounds": scenario.rounds,
                        "local_epochs": scenario.local_epochs,
                        "min_available_clients": scenario.sites,
                        "min_fit_clients": scenario.sites,
                        "connect_timeout_s": 300,
                        "round_timeout_s": 180,
                        "seed": scenario.seed,
                    },
                },
            )
        )

    @property
    def model_base(self) -> Path:
        return self.home / "models"

    @property
    def urls(self) -> dict[str, str]:
        return self.system.urls

    @property
    def bus(self) -> Any:
        return self.system.config.bus

    def common(self) -> Any:
        from edgeloop_common.settings import CommonSettings

        return CommonSettings(
            mode="standalone", data_dir=self.home / "data", mqtt_host=self.broker.host, mqtt_port=self.broker.port
        )

    async def start(self, narrator: _Narrator) -> None:
        narrator.subscribe(self.bus)
        await self.system.start_model_server()
        await self.bus.start()
        # No version exists before the first training: the gateway is waited for only until it is alive.
        await self.system.start(SERVICES, wait_for_model=False)

    async def stop(self) -> None:
        await self.system.stop()
        await self.bus.stop()

    async def get(self, service: str, path: str, **params: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.urls[service], timeout=30) as http:
            response = await http.get(path, params=params)
        if response.status_code != 200:
            raise TelemetryDemoError(f"{service} GET {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json()


# -- the demo --------------------------------------------------------------------------------------------------


async def run_telemetry_demo(
    scenario: TelemetryScenario,
    home: Path,
    *,
    broker: str,
    stop: asyncio.Event,
    echo: Echo,
    keep_running: bool = False,
) -> TelemetryOutcome | None:
    """Play the telemetry demo once, from a cold start under ``home`` (wiped first). None if ``stop`` was set
    meanwhile; :class:`TelemetryDemoError` (or TimeoutError, httpx.HTTPError) when a step did not happen.

    ``keep_running``: afterwards, leave the services up until ``stop`` (to look at their HTTP APIs).
    """
    started = time.monotonic()
    await asyncio.to_thread(_fresh, home)
    narrator = _Narrator(echo, started, scenario)
    mqtt = await start_local_broker(1883, prefer=broker)
    _quiet_service_warnings()  # after the broker: start_local_broker sets the embedded one's log level
    echo(f"mqtt:  {mqtt.kind} broker on {mqtt.host}:{mqtt.port}")
    sites: list[Site] = []
    services = _Services(scenario, home, mqtt)
    try:
        sites = await asyncio.to_thread(_sites_with_history, scenario, home, mqtt)
        for site in sites:
            narrator.say(
                "site",
                f"{site.site_id} ({site.profile}; {site.describe_machines()}): {site.fleet.recorded:,} readings in "
                f"its history {site.history_path}",
            )
        await services.start(narrator)
        urls = services.urls
        echo(
            f"up:    registry {urls['registry']}, ingest {urls['ingest']}, gateway {urls['inference-gateway']}, "
            f"drift {urls['drift']}, deployer {urls['deployer']} (local target), federated {urls[FEDERATED]} "
            f"(Flower {services.flower_address}), model server {urls['model-server']}; one in-process bus, SQLite "
            f"and folders in {home}"
        )
        steps = _Steps(scenario, services, narrator, sites, mqtt, echo)
        outcome = await _unless_stopped(steps.play(), stop)
        if keep_running and not stop.is_set():
            echo(
                f"telemetry: services keep running; try curl {urls['registry']}/v1/models/{MODEL_NAME}/versions or "
                f"curl {urls['drift']}/v1/drift — Ctrl-C stops"
            )
            await stop.wait()
        return outcome
    finally:
        await services.stop()
        await mqtt.stop()
        for site in sites:
            site.history.close()


def _fresh(home: Path) -> None:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)


def _sites_with_history(scenario: TelemetryScenario, home: Path, broker: LocalBroker) -> list[Site]:
    """Each site's machines and the history they already have: ``history_readings`` each, one per second up to
    now, kept in ``<home>/sites/<site>/site-history.sqlite3`` (one transaction)."""
    sites = []
    now = datetime.now(UTC)
    for index, site_id in enumerate(scenario.site_ids()):
        profile = scenario.profile_of(index)
        path = home / "sites" / site_id / "site-history.sqlite3"
        history = SiteHistory(path)
        names = _simulator(scenario, site_id, broker, count=None).devices  # the names the simulator publishes as
        fleet = RecordedFleet(site_id, names, seed=scenario.seed + index + 1, profile=profile, change=scenario.change)
        rows: list[tuple[str, str, datetime, dict[str, float], str | None]] = []
        for step in range(scenario.history_readings):
            at = now - timedelta(seconds=scenario.history_readings - step)
            rows.extend((site_id, r.device_id, r.measured_at, r.readings, r.machine_event) for r in fleet.step(at))
        fleet.recorded = history.append_many(rows)
        fleet.history = history  # from now on every reading the machines publish is also kept here
        sites.append(Site(site_id, profile, path, history, fleet))
    return sites


def _simulator(
    scenario: TelemetryScenario,
    site_id: str,
    broker: LocalBroker,
    *,
    count: int | None,
    fleet: SensorFleet | None = None,
) -> SensorSimulator:
    """The site's machines over MQTT (``edgeloop device simulate --kind sensor``), stepping ``fleet``."""
    simulator = SensorSimulator(
        SensorSimulatorConfig(
            site=site_id,
            device=site_id,
            devices=scenario.devices,
            rate=scenario.rate,
            count=count,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            linger_s=0.0,
        ),
    )
    if fleet is not None:
        if fleet.names != simulator.devices:
            raise TelemetryDemoError(
                f"{site_id}: the simulator publishes as {simulator.devices[:2]}..., not as its fleet"
            )
        simulator.fleet = fleet  # the same machines go on (and the site keeps recording them)
    return simulator


async def _unless_stopped(play: Awaitable[T], stop: asyncio.Event) -> T | None:
    playing = asyncio.ensure_future(play)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({playing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not playing.done():
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing
        return None
    return playing.result()


@dataclass
class _Sensors:
    """The sites' machines over MQTT: a :class:`SensorSimulator` per site (``edgeloop device simulate --kind
    sensor``) stepping the site's fleet, in slices of ``slice_s``. Before each slice the demo waits until the newest
    reading scored was measured at most ``max_lag_s`` before the newest published (or nothing more is being
    scored): ingest -> gateway -> drift in one process take a few hundred readings a second on 2 busy cores, and
    readings queued faster than that would show each step minutes after it happened."""

    scenario: TelemetryScenario
    sites: list[Site]
    broker: LocalBroker
    narrator: _Narrator
    slice_s: float = 5.0
    max_lag_s: float = 3.0
    idle_s: float = 2.0  # nothing scored for this long: the gateway has scored all it will (some readings only fill)
    sent: int = 0
    acked: int = 0
    _running: list[SensorSimulator] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def published(self) -> int:
        return self.sent + sum(simulator.summary.sent for simulator in self._running)

    def start(self, *, count: int | None) -> None:
        """Publish ``count`` readings per machine (None: until :meth:`stop`)."""
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._publish(count), name="demo-sensors")
        self.narrator.say(
            "sensors",
            f"{len(self.sites)} sites x {self.scenario.devices} machines publish a reading each "
            f"{1 / self.scenario.rate:.2g} s on dt/edgeloop/<site>/<device>/telemetry (QoS 1); alerts come back on "
            ".../alert",
        )

    async def _publish(self, count: int | None) -> None:
        per_slice = max(1, round(self.slice_s * self.scenario.rate))
        done = 0
        while not self._stop.is_set() and (count is None or done < count):
            await self._caught_up()
            if self._stop.is_set():
                break
            steps = per_slice if count is None else min(per_slice, count - done)
            self._running = [
                _simulator(self.scenario, site.site_id, self.broker, count=steps, fleet=site.fleet)
                for site in self.sites
            ]
            summaries = await asyncio.gather(*(simulator.run() for simulator in self._running))
            self._running = []
            self.sent += sum(summary.sent for summary in summaries)
            self.acked += sum(summary.acked for summary in summaries)
            done += steps

    async def _caught_up(self) -> None:
        def lag_s() -> float:
            """How long before the newest reading published the newest reading scored was measured."""
            newest = self.narrator.newest_scored
            published = max((site.fleet.last_step_at for site in self.sites if site.fleet.last_step_at), default=None)
            return 0.0 if newest is None or published is None else (published - newest).total_seconds()

        scored, progress_at = -1, time.monotonic()
        while lag_s() > self.max_lag_s and not self._stop.is_set():
            if sum(self.narrator.scored.values()) != scored:
                scored, progress_at = sum(self.narrator.scored.values()), time.monotonic()
            elif time.monotonic() - progress_at > self.idle_s:
                return  # nothing more is being scored: the rest of the lag is readings that only fill windows
            await asyncio.sleep(0.2)

    def check(self) -> None:
        """Raise if the sensors stopped on an error (their broker went away)."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            if error is not None:
                raise TelemetryDemoError(f"the sensors stopped: {error}")

    async def finished(self, timeout_s: float) -> None:
        """Until the ``count`` readings of :meth:`start` are out."""
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout_s)
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        for simulator in self._running:
            simulator.stop()
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await task
            except Exception as exc:  # the MQTT connection failed: a step that did not happen, said as such
                raise TelemetryDemoError(f"the sensors stopped: {exc}") from exc


@dataclass
class _Steps:
    scenario: TelemetryScenario
    services: _Services
    narrator: _Narrator
    sites: list[Site]
    broker: LocalBroker
    echo: Echo
    sensors: _Sensors = field(init=False)
    _clients: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sensors = _Sensors(self.scenario, self.sites, self.broker, self.narrator)

    @property
    def site_ids(self) -> list[str]:
        return [site.site_id for site in self.sites]

    @property
    def changed_site(self) -> Site:
        return self.sites[self.scenario.change_site - 1]

    async def play(self) -> TelemetryOutcome:
        say = self.narrator.say
        alerts = await self._listen_for_alerts()
        try:
            first = await self._first_version()
            await self._deployed(first)

            self.echo("")
            self.echo("--- sensors -> alerts: the sites' machines publish readings; the gateway scores them ---")
            self.sensors.start(count=None)
            await self._checked_without_drift(first)
            say("alerts", self.narrator.alerts_text("before the change"))

            self.echo("")
            self.echo(f"--- drift: {self.changed_site.site_id} changes ---")
            alarm_step = await self._change_and_drift(first)
            await self._keep_recording(alarm_step)
            say("alerts", self.narrator.alerts_text("after the change"))

            self.echo("")
            self.echo(f"--- federated retraining across {len(self.sites)} sites (Flower) ---")
            self.narrator.phase = "during the retraining"
            result = await self._federated()
            new = int(result["version"])
            promotion = result.get("promotion") or {}
            if not promotion.get("promoted"):
                raise TelemetryDemoError(
                    f"the promotion gate refused version {new}: {promotion.get('decision', 'no decision')}; the "
                    f"sites keep version {first}, there is nothing to roll out"
                )

            self.echo("")
            self.echo(f"--- rollout: version {new} to every site ---")
            await self._deployed(new)
            await self._scored_by(new, first)
            return TelemetryOutcome(first, new, drift_site=self.changed_site.site_id)
        finally:
            with contextlib.suppress(TelemetryDemoError):  # a step failed or the demo was stopped: that is said
                await self.sensors.stop()
            await alerts.close()
            await asyncio.to_thread(self._stop_clients)

    # -- 1. the first version --------------------------------------------------------------------------------

    async def _first_version(self) -> int:
        """Trained centrally on the sites' histories and registered + promoted through the registry's API, as an
        operator does with ``edgeloop train --telemetry --history ... --register URL``.

        Centralised, not federated: the first version only bootstraps the loop (as if the sites' histories had
        been pooled once for a pilot); the federated retraining is what the demo is about. Centralised it takes
        seconds where a federated training takes a minute of client processes, so the sensors start sooner, and
        the promotion gate then measures the federated version against a model that saw the pooled data."""
        from edgeloop_trainer.registration import RegistrationError

        from edgeloop.train_telemetry import train_centralised

        say = self.narrator.say
        say(
            "trainer", f"the first version of {MODEL_NAME}, trained centrally on the {len(self.sites)} sites' histories"
        )
        training = asyncio.to_thread(
            train_centralised,
            [site.history_path for site in self.sites],
            self.services.model_base,
            model_name=MODEL_NAME,
            epochs=self.scenario.first_epochs,
            seed=self.scenario.seed,
            register_url=self.services.urls["registry"],
            promote=True,
            log=lambda line: say("trainer", line),
        )
        try:
            result = await training
        except RegistrationError as exc:
            raise TelemetryDemoError(f"the first version could not be registered: {exc}") from exc
        decision = result.decision or {}
        if not decision.get("promoted"):
            raise TelemetryDemoError(f"the first version was not promoted: {decision.get('decision', 'no decision')}")
        return int(result.version)

    async def _deployed(self, version: int) -> None:
        await self.narrator.wait_deployed(version, self.site_ids, timeout_s=120)

    # -- 2. sensors -> alerts, and no drift before the change --------------------------------------------------

    async def _listen_for_alerts(self) -> Any:
        """What the devices get on ``dt/edgeloop/<site>/<device>/alert``: each alert prints (the first few of each
        phase) and counts."""
        from edgeloop_common import topics
        from edgeloop_common.mqtt_asyncio import AsyncMqttClient

        def on_message(topic: str, payload: bytes) -> None:
            _, _, site, device, _ = topic.split("/", 4)
            try:
                alert = json.loads(payload)
            except ValueError:
                alert = {"error": "the alert is not JSON", "raw": payload[:200].decode("utf-8", errors="replace")}
            self.narrator.alert(site, SensorAlert(device, alert if isinstance(alert, dict) else {"alert": alert}))

        client = AsyncMqttClient(self.broker.host, self.broker.port, on_message=on_message)
        await client.connect()
        await client.subscribe(topics.mqtt_topic(topics.MQTT_ALERT, site="+", device="+"), qos=1)
        return client

    async def _drift_streams(self, version: int) -> dict[str, dict[str, Any]]:
        view = await self.services.get("drift", "/v1/drift", model_name=MODEL_NAME)
        return {s["site_id"]: s for s in view["streams"] if s["model_version"] == version}

    async def _checked_without_drift(self, version: int) -> None:
        """Until the drift service has compared every site's window with its reference ``checks_before_change``
        times; an alarm before the change fails the demo."""
        wanted = self.scenario.checks_before_change

        async def checked() -> dict[str, dict[str, Any]] | None:
            self.sensors.check()
            self._no_drift_yet("before the change")
            streams = await self._drift_streams(version)
            if all(streams.get(site, {}).get("checks", 0) >= wanted for site in self.site_ids):
                return streams
            return None

        streams = await wait_until(
            checked,
            f"the drift service to check every site's window {wanted} times",
            timeout_s=PHASE_TIMEOUT_S,
            interval_s=0.5,
        )
        self._no_drift_yet("before the change")
        for site in self.site_ids:
            stream = streams[site]
            reference = stream.get("reference") or {}
            own = "its own reference" if reference.get("source") == "registry" else "its first window"
            self.narrator.say(
                "drift",
                f"{site}: {stream['checks']} checks of its last {stream['window_fill']} sampled windows against "
                f"{own} of v{version}: no drift (closest: {_closest(stream)})",
            )
        published = self.sensors.published
        self.narrator.say(
            "gateway",
            f"{sum(self.narrator.scored.values()):,} readings scored so far of {published:,} published (a machine's "
            "first 29 fill its window)",
        )

    def _no_drift_yet(self, when: str) -> None:
        if self.narrator.drift:
            _, alarm = self.narrator.drift[0]
            raise TelemetryDemoError(
                f"drift {when}, at {alarm.site_id}: {alarm.test} of {alarm.feature} {alarm.statistic:.3g} > "
                f"{alarm.threshold:.3g}; nothing had changed yet"
            )

    # -- 3. the change, and drift at that site only ------------------------------------------------------------

    async def _change_and_drift(self, version: int) -> int:
        """Apply the change at one site; wait for the drift service's alarm (that site only) and its training
        request. Returns the changed fleet's step at the alarm."""
        site = self.changed_site
        fleet = site.fleet
        fleet.change_at = site.change_from = fleet.step_index  # the simulator's settable change, from now on
        site.recorded_before_change = fleet.recorded
        self.narrator.change = (site.site_id, datetime.now(UTC))  # the readings measured from now on are changed
        self.narrator.phase = "after the change"
        self.narrator.say(
            "sensors",
            f"{site.site_id}: {CHANGE_WORDS[self.scenario.change]}, from its machines' reading "
            f"{fleet.step_index:,} on ({self.scenario.change})",
        )
        limit = self.scenario.max_readings_to_drift

        async def alarmed() -> bool:
            self.sensors.check()
            if self.narrator.drift:
                return True
            if self.narrator.scored_since_change >= limit * self.scenario.devices:
                streams = await self._drift_streams(version)
                closest = _closest(streams[site.site_id]) if site.site_id in streams else "no check"
                raise TelemetryDemoError(
                    f"no drift detected at {site.site_id} within {limit} readings per machine scored after the "
                    f"change (closest: {closest})"
                )
            return False

        await wait_until(alarmed, f"drift at {site.site_id}", timeout_s=PHASE_TIMEOUT_S)
        alarm_step = fleet.step_index
        scored = self.narrator.scored_at_alarm.get(site.site_id, 0)
        await wait_until(self._training_requested, "the drift service's TrainingRequested", timeout_s=30)
        self._drift_only_at(site.site_id)
        self.narrator.say(
            "drift",
            f"verdict: drift at {site.site_id} once {scored:,} of its readings from after the change had been scored "
            f"(about {scored / self.scenario.devices:.0f} per machine); none before the change, none at "
            f"{', '.join(s for s in self.site_ids if s != site.site_id)}",
        )
        return alarm_step

    async def _training_requested(self) -> bool:
        return any(
            event.model_name == MODEL_NAME and event.reason == "drift" for event in self.narrator.training_requests
        )

    def _drift_only_at(self, site_id: str) -> None:
        elsewhere = [alarm for _, alarm in self.narrator.drift if alarm.site_id != site_id]
        if elsewhere:
            alarm = elsewhere[0]
            raise TelemetryDemoError(
                f"drift at {alarm.site_id} too, which did not change: {alarm.test} of {alarm.feature} "
                f"{alarm.statistic:.3g} > {alarm.threshold:.3g}"
            )

    async def _keep_recording(self, alarm_step: int) -> None:
        """The sites keep recording ``readings_after_drift`` more readings per machine (the retraining learns the
        change from them), then their sensors stop while the model is retrained."""
        fleet, more = self.changed_site.fleet, self.scenario.readings_after_drift

        async def recorded() -> bool:
            self.sensors.check()
            return fleet.step_index >= alarm_step + more

        await wait_until(recorded, f"{more} more readings per machine", timeout_s=PHASE_TIMEOUT_S)
        await self.sensors.stop()
        sent, acked = self.sensors.sent, self.sensors.acked
        await self._scoring_settled(timeout_s=300)  # what was published is scored (and compared) by version 1
        self._drift_only_at(self.changed_site.site_id)
        self.narrator.say(
            "sensors",
            f"stopped for the retraining: {sent:,} readings published, {acked:,} acknowledged by the broker, "
            f"{sum(self.narrator.scored.values()):,} scored",
        )
        for site in self.sites:
            since = (
                f", {site.fleet.recorded - site.recorded_before_change:,} since the change" if site.change_from else ""
            )
            self.narrator.say("site", f"{site.site_id}: {site.fleet.recorded:,} readings in its history{since}")

    # -- 4. the federated retraining ---------------------------------------------------------------------------

    async def _federated(self) -> dict[str, Any]:
        say = self.narrator.say

        async def requested() -> dict[str, Any] | None:
            trainings = (await self.services.get(FEDERATED, "/v1/trainings"))["trainings"]
            return next((t for t in trainings if t["reason"] == "drift"), None)

        training = await wait_until(requested, "the federated service to take the TrainingRequested", timeout_s=60)
        training_id = training["training_id"]
        spec = training["spec"]
        say(
            "federated",
            f"training {training_id} ({training['reason']}, requested by {training['requested_by']}): "
            f"{spec['strategy']}, {spec['rounds']} rounds of {spec['local_epochs']} local epochs; "
            f"{training['message']}",
        )
        for site in self.sites:
            self._start_client(site)

        shown_rounds = 0
        last_message = training["message"]
        deadline = time.monotonic() + 900
        while True:
            training = await self.services.get(FEDERATED, f"/v1/trainings/{training_id}")
            for record in training["rounds"][shown_rounds:]:
                say("federated", _round_text(record, spec["rounds"]))
                shown_rounds += 1
            finished = training["state"] in ("succeeded", "failed")  # said below, with the registry's view
            if training["message"] != last_message and not training["message"].startswith("round ") and not finished:
                say("federated", training["message"])
            last_message = training["message"]
            if training["state"] in ("succeeded", "failed"):
                break
            self._clients_alive(training)
            if time.monotonic() > deadline:
                raise TelemetryDemoError(f"the federated training {training_id} is still {training['state']}")
            await asyncio.sleep(0.5)
        if training["state"] == "failed":
            raise TelemetryDemoError(f"the federated training failed: {training['error']}{self._client_logs()}")
        await asyncio.to_thread(self._clients_done)
        result: dict[str, Any] = training["result"]
        await self._lineage(int(result["version"]))
        promotion = result.get("promotion") or {}
        say("registry", f"promotion gate on version {result['version']}: {promotion.get('decision')}")
        return result

    def _start_client(self, site: Site) -> None:
        """``edgeloop federated client`` as its own process, as the site runs it beside its history."""
        log = site.history_path.parent / "federated-client.log"
        arguments = ["--site", site.site_id, "--history", str(site.history_path)]
        arguments += ["--server", self.services.flower_address, "--once", "--connect-timeout-s", "120"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "edgeloop.main", "federated", "client", *arguments],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._clients.append((site.site_id, process, log))
        self.narrator.say(
            "site", f"{site.site_id}: edgeloop federated client {' '.join(arguments)} (pid {process.pid})"
        )

    def _clients_alive(self, training: dict[str, Any]) -> None:
        """A site's client that exits before the training is over cannot take part: say why now, not at a timeout."""
        if training["state"] != "waiting_for_sites":
            return
        for site_id, process, log in self._clients:
            if process.poll() is not None:
                raise TelemetryDemoError(
                    f"the federated client of {site_id} exited with {process.returncode} before the training "
                    f"started: {_tail(log)}"
                )

    def _clients_done(self) -> None:
        for site_id, process, log in self._clients:
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise TelemetryDemoError(
                    f"the federated client of {site_id} did not leave after the training"
                ) from None
            if code != 0:
                raise TelemetryDemoError(f"the federated client of {site_id} exited with {code}: {_tail(log)}")
        self._clients.clear()

    def _client_logs(self) -> str:
        return "".join(f"\n  {site_id}'s client: {_tail(log)}" for site_id, _, log in self._clients)

    def _stop_clients(self) -> None:
        for _, process, _ in self._clients:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self._clients.clear()

    async def _lineage(self, version: int) -> None:
        """What the registry holds of the version: its figures and lineage (docs/telemetry.md, lineage)."""
        registered = await self.services.get("registry", f"/v1/models/{MODEL_NAME}/versions/{version}")
        parameters = (registered.get("lineage") or {}).get("parameters") or {}
        metrics = registered.get("metrics") or {}
        counts = ", ".join(
            f"{site} {count:,}" for site, count in sorted((parameters.get("samples_per_client") or {}).items())
        )
        self.narrator.say(
            "registry",
            f"version {version} lineage: trained_by {parameters.get('trained_by')} ({parameters.get('strategy')}), "
            f"{parameters.get('rounds')} rounds x {parameters.get('local_epochs')} local epochs, reason "
            f"{parameters.get('reason')}, training {parameters.get('training_id')}",
        )
        self.narrator.say(
            "registry",
            f"version {version} lineage: sites {', '.join(parameters.get('sites') or [])}, clients per round "
            f"{parameters.get('clients_per_round')}, training windows per site {counts}",
        )
        baseline = metrics.get("baseline") or {}
        versus = f"; production v{baseline['version']} on the same windows {baseline['pr_auc']:.4f}" if baseline else ""
        self.narrator.say(
            "registry",
            f"version {version} on the held-out machines of every site: PR-AUC {metrics.get('pr_auc', 0.0):.4f}, "
            f"precision {metrics.get('precision', 0.0):.3f}, recall {metrics.get('recall', 0.0):.3f} at threshold "
            f"{metrics.get('threshold', 0.0):.3f}{versus}",
        )

    # -- 5. the new version serves ------------------------------------------------------------------------------

    async def _scored_by(self, new: int, first: int) -> None:
        """The sites' machines publish again; their readings are scored by the new version (a few printed)."""
        count = self.scenario.readings_after_rollout
        self.narrator.phase = "after the rollout"
        self.narrator.show_scores_of = new
        self.sensors.start(count=count)
        await self.sensors.finished(timeout_s=PHASE_TIMEOUT_S)
        await self._scoring_settled()
        by_version = Counter[int]()
        by_site = Counter[str]()
        for (phase, site, version), n in self.narrator.scored.items():
            if phase == "after the rollout":
                by_version[version] += n
                by_site[site] += n if version == new else 0
        if not by_version[new]:
            raise TelemetryDemoError(f"no reading was scored by version {new} after its rollout")
        sites = ", ".join(f"{site} {by_site[site]:,}" for site in self.site_ids)
        self.narrator.say(
            "gateway",
            f"after the rollout: {sum(by_version.values()):,} readings scored, {by_version[new]:,} by version {new} "
            f"({sites}), {by_version[first]:,} by version {first}",
        )
        self.narrator.say("alerts", self.narrator.alerts_text("after the rollout"))

    async def _scoring_settled(self, quiet_s: float = 1.5, timeout_s: float = 60.0) -> None:
        """Until no reading has been scored for ``quiet_s`` (the pipeline has caught up with the sensors). Not every
        reading scores: one after a repair starts its machine's window again (30 readings)."""
        last, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            scored = sum(self.narrator.scored.values())
            if scored != last:
                last, quiet_since = scored, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return
            await asyncio.sleep(0.25)


def _round_text(record: dict[str, Any], rounds: int) -> str:
    samples = record.get("samples") or {}
    counts = ", ".join(f"{site} {count:,} windows" for site, count in sorted(samples.items()))
    evaluation = record.get("evaluation") or {}
    figure = f", held-out PR-AUC {evaluation['pr_auc']:.4f}" if "pr_auc" in evaluation else ""
    loss = f", loss {record['train_loss']:.4f}" if record.get("train_loss") is not None else ""
    failed = f", {record['failures']} failed ({'; '.join(record['failure_reasons'])})" if record.get("failures") else ""
    return (
        f"round {record['round']}/{rounds}: {len(record['clients'])} sites answered ({counts}){failed}{loss}{figure}, "
        f"{record['duration_s']:.1f} s"
    )


def _closest(stream: dict[str, Any]) -> str:
    """The comparison of the last check nearest its threshold, e.g. ``psi of rpm_std 0.061 / 0.2``."""
    comparisons = [
        (
            entry["statistic"] / entry["threshold"],
            f"{test} of {feature} {entry['statistic']:.3g} / {entry['threshold']:.3g}",
        )
        for feature, tests in (stream.get("statistics") or {}).items()
        for test, entry in tests.items()
        if entry.get("threshold")
    ]
    return max(comparisons)[1] if comparisons else "no comparison yet"


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return " | ".join(text[-lines:]) if text else "(empty log)"


def _quiet_service_warnings() -> None:
    import logging

    import edgeloop_federated  # noqa: F401  (first: it turns Flower's own usage reports off before Flower loads)
    import flwr.common.logger  # noqa: F401  (Flower sets its logger to DEBUG when it loads: quieted below)

    for name in ("edgeloop_drift.service", "edgeloop_model_server.service", "edgeloop_federated.service"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # readiness probes that connect and leave
    logging.getLogger("flwr").setLevel(logging.ERROR)


# -- the command -----------------------------------------------------------------------------------------------


def run_command(scenario: TelemetryScenario, home: Path, *, broker: str, keep_running: bool) -> None:
    """``edgeloop demo --telemetry``: the demo in this process; exit status 1 (and why) when a step did not happen."""
    import typer

    try:
        outcome = asyncio.run(_main(scenario, home, broker=broker, keep_running=keep_running))
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        typer.echo("stopped")
        return
    except (RuntimeError, TimeoutError, httpx.HTTPError, OSError, ValueError) as exc:  # TelemetryDemoError too
        # A step that did not happen (a service's log above may say more): which, without a stack trace.
        typer.secho(f"telemetry: stopped: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    if outcome is not None:
        typer.echo(
            f"telemetry: done: drift at {outcome.drift_site}; federated version {outcome.new_version} promoted over "
            f"version {outcome.first_version} and serving every site"
        )


async def _main(scenario: TelemetryScenario, home: Path, *, broker: str, keep_running: bool) -> TelemetryOutcome | None:
    import signal

    import typer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    changed = scenario.site_ids()[scenario.change_site - 1]
    typer.echo(
        f"telemetry: {scenario.sites} sites x {scenario.devices} machines; the change: {scenario.change} at "
        f"{changed}; federated retraining: {scenario.rounds} rounds; state in {home}"
    )
    return await run_telemetry_demo(
        scenario, home, broker=broker, stop=stop, echo=typer.echo, keep_running=keep_running
    )
