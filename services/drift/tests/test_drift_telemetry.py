"""Drift on sensor features (docs/telemetry.md, "Drift on readings"): the simulator's settable change raises drift
and a training request for the failure model, and nothing is raised before it.

Readings come from the sensor simulator (``edgeloop.sensors``), windows and features from
``edgeloop_common.telemetry.features`` and the reference from ``edgeloop_common.telemetry.model.reference_stats``,
as the trainer registers them (with the site's own samples under ``sites``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from drift_samples import REGISTRY, ManualClock, registry_client
from edgeloop.sensors import iterate_site
from edgeloop_common.bus import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import DriftDetected, TelemetryScored, TrainingRequested
from edgeloop_common.settings import CommonSettings
from edgeloop_common.telemetry.features import (
    SIGNALS,
    WINDOW_READINGS,
    DeviceWindows,
    Reading,
    concatenate,
    features_dict,
    labelled_windows,
)
from edgeloop_common.telemetry.model import reference_stats
from edgeloop_drift.app import create_app
from edgeloop_drift.metrics import DriftMetrics
from edgeloop_drift.service import DriftService, TelemetryDriftConfig
from edgeloop_drift.settings import Settings
from edgeloop_drift.windows import WindowConfig

from tests.helpers import eventually

MODEL = "machine-failure"
SITE = "plant-a"
DEVICES = 24
CHANGE_AT = 400  # the simulator's step from which the temperature sensors read warmer (recalibrated)
STEPS = 800


def site_reference() -> dict[str, Any]:
    """The version's reference_stats: pooled samples, and the site's own (another stretch of the same site)."""
    by_device: dict[str, list[Reading]] = {}
    for record in iterate_site(f"{SITE}-history", DEVICES, 900, seed=5, profile="temperate"):
        by_device.setdefault(record.device_id, []).append(Reading(record.readings, record.machine_event))
    windows = concatenate(labelled_windows(history) for history in by_device.values())
    stats = reference_stats(windows.features)
    stats["sites"] = {SITE: {"n": stats["n"], "features": stats["features"]}}
    return stats


def scored_events(*, sample_every: int = 1) -> Iterator[tuple[int, TelemetryScored]]:
    """(step, TelemetryScored) of the site's live readings, recalibrated from CHANGE_AT on; every
    ``sample_every``-th window of each device."""
    windows = DeviceWindows(stride=sample_every)
    start = None
    for record in iterate_site(
        SITE, DEVICES, STEPS, seed=3, profile="temperate", change="recalibrated-temperature", change_at=CHANGE_AT
    ):
        start = start or record.measured_at
        if record.machine_event is not None:
            windows.forget(SITE, record.device_id)
            continue
        features = windows.add(SITE, record.device_id, record.readings)
        if features is None:
            continue
        yield (
            int((record.measured_at - start).total_seconds()),
            TelemetryScored(
                device_id=record.device_id,
                site_id=SITE,
                measured_at=record.measured_at,
                model_name=MODEL,
                model_version=1,
                served_by="edge",
                failure_probability=0.0,
                threshold=0.5,
                alert=False,
                window_readings=WINDOW_READINGS,
                features=features_dict(features),
            ),
        )


class Lookup:
    def __init__(self, stats: dict[str, Any]) -> None:
        from edgeloop_common.reference_stats import ReferenceStats

        self.stats = ReferenceStats.model_validate(stats)

    async def reference_stats(self, model_name: str, version: int) -> Any:
        return self.stats if (model_name, version) == (MODEL, 1) else None


async def test_the_recalibrated_sensor_raises_drift_and_a_training_request_and_nothing_before_it() -> None:
    clock = ManualClock()
    service = DriftService(
        WindowConfig(),
        Lookup(site_reference()),
        metrics=DriftMetrics(),
        clock=clock,
        telemetry=TelemetryDriftConfig(),
    )
    raised: list[tuple[int, DriftDetected]] = []
    training: list[tuple[int, TrainingRequested]] = []
    for step, event in scored_events():
        clock.now = datetime.fromtimestamp(event.measured_at.timestamp(), tz=clock.now.tzinfo)
        reaction = await service.observe_telemetry(event)
        raised += [(step, alarm) for alarm in reaction.drift]
        if reaction.training is not None:
            training.append((step, reaction.training))

    assert raised, "the recalibration was never detected"
    assert min(step for step, _ in raised) >= CHANGE_AT, f"drift before the change: {raised[:3]}"
    assert min(step for step, _ in raised) < CHANGE_AT + 300, "detected too late"
    assert {alarm.feature for _, alarm in raised} <= {f"temperature_c_{s}" for s in ("mean", "min", "max")}
    assert {(alarm.model_name, alarm.model_version, alarm.site_id) for _, alarm in raised} == {(MODEL, 1, SITE)}
    assert all(alarm.statistic > alarm.threshold for _, alarm in raised)
    assert len(training) == 1  # one request, then the debounce (300 s) holds the next
    step, request = training[0]
    assert (request.model_name, request.reason, request.requested_by) == (MODEL, "drift", "drift")
    assert json.loads(request.detail)["site_id"] == SITE
    view = service.snapshot(model_name=MODEL)["streams"][0]
    assert view["reference"]["source"] == "registry" and set(view["reference"]["features"]) >= {
        f"{signal}_mean" for signal in SIGNALS
    }


async def test_without_the_sites_own_reference_the_pooled_one_is_used() -> None:
    stats = site_reference()
    stats.pop("sites")
    service = DriftService(WindowConfig(), Lookup(stats), telemetry=TelemetryDriftConfig())
    for _, event in scored_events():
        await service.observe_telemetry(event)
        break
    key = next(iter(service.streams))
    stream = service.streams[key]
    assert stream.reference is not None and stream.reference.source == "registry"
    assert stream.reference.size == stats["n"]


@pytest.mark.kafka
async def test_scored_telemetry_on_kafka_comes_out_as_drift_after_the_change_only(
    kafka_bootstrap: str, kafka_topics: str
) -> None:
    common = CommonSettings(mode="distributed", kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=kafka_topics)
    # The scorer's events already thinned to windows that do not overlap (sample_every here does the same).
    settings = Settings(common=common, registry_url=REGISTRY, telemetry_sample_every=1)
    app = create_app(settings, references=registry_client({(MODEL, 1): {"reference_stats": site_reference()}}))
    events = list(scored_events(sample_every=WINDOW_READINGS))
    drift: list[DriftDetected] = []
    training: list[TrainingRequested] = []

    async def on_drift(event: DriftDetected, context: EventContext) -> None:
        drift.append(event)

    async def on_training(event: TrainingRequested, context: EventContext) -> None:
        training.append(event)

    trainer = KafkaBus(bootstrap_servers=kafka_bootstrap, source="trainer", topic_prefix=kafka_topics)
    trainer.subscribe(DriftDetected, on_drift, group="trainer-drift")
    trainer.subscribe(TrainingRequested, on_training, group="trainer")
    scorer = KafkaBus(bootstrap_servers=kafka_bootstrap, source="edge", topic_prefix=kafka_topics)
    await scorer.start()
    await trainer.start()
    before = [event for step, event in events if step < CHANGE_AT]
    try:
        async with app.router.lifespan_context(app):
            await app.state.bus.wait_until_assigned(timeout_s=30)
            last = None
            for event in before:
                last = await scorer.enqueue(event, key=event.device_id)
            assert last is not None
            await last
            await eventually(lambda: _seen(app) == len(before), what="the readings before the change", timeout_s=60)
            assert drift == [], f"drift before the change: {drift[:3]}"
            for _, event in events[len(before) :]:
                last = await scorer.enqueue(event, key=event.device_id)
            await last
            await eventually(lambda: training, what="a TrainingRequested on Kafka", timeout_s=60)
    finally:
        await trainer.stop()
        await scorer.stop()
    assert {event.feature for event in drift} & {f"temperature_c_{s}" for s in ("mean", "min", "max")}
    assert {(event.model_name, event.site_id) for event in drift} == {(MODEL, SITE)}
    assert training[0].model_name == MODEL and training[0].reason == "drift"


def _seen(app: Any) -> int:
    service: DriftService | None = getattr(app.state, "drift", None)
    if service is None:
        return 0
    return sum(stream.window.samples_seen for stream in service.streams.values())
