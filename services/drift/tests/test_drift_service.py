"""The drift service's logic with the default settings: windows, ADWIN, debounce, policy, references."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from drift_samples import (
    FixedReferences,
    ManualClock,
    correctness,
    inference_event,
    inference_events,
    labeled_event,
    prediction_records,
    reference_stats,
)
from edgeloop_common.events import InferenceCompleted
from edgeloop_drift.app import drift_policy, window_config
from edgeloop_drift.service import DriftPolicy, DriftService, Reaction
from edgeloop_drift.settings import Settings

SETTINGS = Settings(registry_url="")
CONFIG = window_config(SETTINGS)
POLICY = drift_policy(SETTINGS)


def service_with(
    references: FixedReferences | None = None, *, policy: DriftPolicy = POLICY, clock: ManualClock | None = None
) -> DriftService:
    lookup = references if references is not None else FixedReferences({("catdog", 1): reference_stats()})
    return DriftService(CONFIG, lookup, policy=policy, clock=clock or ManualClock())


def metric(service: DriftService, name: str, labels: dict[str, str]) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def feed(service: DriftService, events: list[InferenceCompleted]) -> list[tuple[int, Reaction]]:
    """(1-based position, reaction) of every event that made the service publish something."""
    found = []
    for position, event in enumerate(events, start=1):
        reaction = await service.observe_inference(event)
        if reaction.events():
            found.append((position, reaction))
    return found


async def test_darkened_images_raise_drift_on_brightness_within_one_window() -> None:
    rng = np.random.default_rng(11)
    service = service_with()
    assert await feed(service, inference_events(rng, 400, prefix="normal")) == []

    reactions = await feed(service, inference_events(rng, CONFIG.window_size, darken=0.5, prefix="dark"))

    assert reactions, "no drift within one window of darkened images"
    position, first = reactions[0]
    assert position <= 100  # the benchmark's target; a window is 200
    brightness = [event for event in first.drift if event.feature == "brightness_mean"]
    assert brightness, [event.feature for event in first.drift]
    for event in first.drift:
        assert (event.model_name, event.model_version, event.site_id) == ("catdog", 1, "site-a")
        assert event.statistic > event.threshold and event.window_size == CONFIG.window_size
        assert event.test in ("psi", "ks")
    assert first.training is not None and first.training.reason == "drift"
    assert first.training.model_name == "catdog" and first.training.requested_by == "drift"
    detail = json.loads(first.training.detail)
    assert detail["site_id"] == "site-a" and detail["model_version"] == 1
    assert {"test", "feature", "statistic", "threshold", "window_size"} <= set(detail["evidence"][0])
    assert {item["feature"] for item in detail["evidence"]} == {event.feature for event in first.drift}


async def test_stationary_predictions_raise_no_alarm_over_a_long_run() -> None:
    rng = np.random.default_rng(12)
    service = service_with()
    events = inference_events(rng, 30_000)
    assert await feed(service, events) == []
    stream = service.snapshot()["streams"][0]
    assert stream["checks"] == 1 + (30_000 - CONFIG.window_size) // CONFIG.check_every
    assert set(stream["statistics"]) == {
        "confidence",
        "score:cat",
        "score:dog",
        "brightness_mean",
        "contrast_std",
        "sharpness_laplacian_var",
        "width",
        "height",
    }


async def labels(service: DriftService, outcomes: list[bool], *, prefix: str) -> list[tuple[int, Reaction]]:
    """Predictions then labels of ``outcomes`` (True: the label agrees with the prediction)."""
    rng = np.random.default_rng(len(outcomes))
    for index, record in enumerate(prediction_records(rng, len(outcomes))):
        await service.observe_inference(inference_event(record, sample_id=f"{prefix}-{index}"))
    found = []
    for index, correct in enumerate(outcomes):
        reaction = service.observe_label(labeled_event(f"{prefix}-{index}", correct=correct))
        if reaction.events():
            found.append((index + 1, reaction))
    return found


async def test_adwin_raises_an_alarm_soon_after_accuracy_drops_and_none_before() -> None:
    rng = np.random.default_rng(13)
    service = service_with()
    assert await labels(service, list(correctness(rng, 2000, 0.9)), prefix="good") == []

    reactions = await labels(service, list(correctness(rng, 300, 0.6)), prefix="worse")

    assert reactions, "ADWIN found no drop from 0.9 to 0.6 in 300 labels"
    position, reaction = reactions[0]
    assert position <= 150
    (event,) = reaction.drift
    assert (event.test, event.feature, event.model_name, event.model_version) == ("adwin", "accuracy", "catdog", 1)
    assert 0.05 < event.statistic < 0.6 and event.threshold == SETTINGS.adwin_delta
    assert reaction.training is not None and "accuracy_after" in reaction.training.detail
    accuracy = service.snapshot()["accuracy"][0]
    assert accuracy["labels_seen"] == 2300 and accuracy["drops_detected"] >= 1
    assert accuracy["accuracy_estimate"] < 0.85  # ADWIN forgot most of the labels before the drop


async def test_adwin_raises_no_alarm_when_accuracy_improves() -> None:
    rng = np.random.default_rng(14)
    service = service_with()
    outcomes = list(correctness(rng, 1000, 0.6)) + list(correctness(rng, 1000, 0.95))
    assert await labels(service, outcomes, prefix="better") == []
    assert service.snapshot()["accuracy"][0]["accuracy_estimate"] > 0.85  # ADWIN did see the change


async def test_a_persisting_drift_is_published_once_per_debounce_interval() -> None:
    rng = np.random.default_rng(15)
    clock = ManualClock()
    service = service_with(clock=clock)
    await feed(service, inference_events(rng, 400))
    first = await feed(service, inference_events(rng, 200, darken=0.5, prefix="dark-1"))
    alarmed = [(event.test, event.feature) for _, reaction in first for event in reaction.drift]
    assert ("ks", "brightness_mean") in alarmed and len(alarmed) == len(set(alarmed))  # each once
    assert [reaction.training is not None for _, reaction in first] == [True] + [False] * (len(first) - 1)

    clock.advance(SETTINGS.debounce_s - 1)
    assert await feed(service, inference_events(rng, 200, darken=0.5, prefix="dark-2")) == []
    debounced = {"model": "catdog", "test": "ks", "feature": "brightness_mean"}
    assert metric(service, "edgeloop_drift_alarms_debounced_total", debounced) >= 8

    clock.advance(2)
    again = await feed(service, inference_events(rng, 25, darken=0.5, prefix="dark-3"))
    assert [(position, reaction.training is not None) for position, reaction in again] == [(25, True)]
    assert {(event.test, event.feature) for event in again[0][1].drift} == set(alarmed)


async def test_no_training_request_when_the_policy_says_so() -> None:
    rng = np.random.default_rng(16)
    service = service_with(policy=replace(POLICY, request_training=False))
    await feed(service, inference_events(rng, 400))
    reactions = await feed(service, inference_events(rng, 200, darken=0.5, prefix="dark"))
    assert reactions and all(reaction.drift and reaction.training is None for _, reaction in reactions)


async def test_training_requests_are_debounced_per_model_and_site() -> None:
    rng = np.random.default_rng(17)
    clock = ManualClock()
    service = service_with(clock=clock)
    for site in ("site-a", "site-b"):
        await feed(service, inference_events(rng, 400, site_id=site, prefix=site))
    dark_a = await feed(service, inference_events(rng, 200, darken=0.5, site_id="site-a", prefix="a-dark"))
    dark_b = await feed(service, inference_events(rng, 200, darken=0.5, site_id="site-b", prefix="b-dark"))
    assert [reaction.training is not None for _, reaction in dark_a][:1] == [True]
    assert [reaction.training is not None for _, reaction in dark_b][:1] == [True]  # another site: its own

    # A different drift at site-a within the interval: evidence published, no second training request.
    rng_labels = np.random.default_rng(18)
    outcomes = list(correctness(rng_labels, 2000, 0.9)) + list(correctness(rng_labels, 300, 0.5))
    accuracy = await labels(service, outcomes, prefix="acc")
    assert accuracy and accuracy[0][1].drift[0].test == "adwin" and accuracy[0][1].training is None


async def test_the_first_full_window_is_the_reference_when_the_registry_has_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(19)
    references = FixedReferences({})
    clock = ManualClock()
    service = service_with(references, clock=clock)
    with caplog.at_level(logging.WARNING, logger="edgeloop_drift.service"):
        assert await feed(service, inference_events(rng, 600)) == []
    assert "first full window of site site-a" in caplog.text
    assert service.snapshot()["streams"][0]["reference"]["source"] == "first_window"
    assert references.asked == [("catdog", 1)]  # not again before reference_retry

    reactions = await feed(service, inference_events(rng, 200, darken=0.5, prefix="dark"))
    assert reactions and any(event.feature == "brightness_mean" for event in reactions[0][1].drift)


async def test_a_reference_that_appears_in_the_registry_later_replaces_the_first_window() -> None:
    rng = np.random.default_rng(20)
    references = FixedReferences({})
    clock = ManualClock()
    service = service_with(references, clock=clock)
    await feed(service, inference_events(rng, 300))
    references.known[("catdog", 1)] = reference_stats()
    clock.advance(POLICY.reference_retry.total_seconds())
    await feed(service, inference_events(rng, 1))
    reference = service.snapshot()["streams"][0]["reference"]
    assert reference["source"] == "registry" and reference["size"] == 1000
    assert references.asked == [("catdog", 1), ("catdog", 1)]


async def test_the_registry_is_asked_once_per_version_for_all_sites() -> None:
    rng = np.random.default_rng(21)
    references = FixedReferences({("catdog", 1): reference_stats(), ("catdog", 2): reference_stats(seed=1)})
    service = service_with(references)
    for site in ("site-a", "site-b", "site-c"):
        await feed(service, inference_events(rng, 30, site_id=site, prefix=site))
    await feed(service, inference_events(rng, 30, version=2, prefix="v2"))
    assert references.asked == [("catdog", 1), ("catdog", 2)]
    streams = service.snapshot()["streams"]
    assert (streams[0]["model_version"], streams[0]["site_id"]) == (2, "site-a")  # most recent first
    assert all(stream["reference"]["source"] == "registry" for stream in streams)
    assert all(stream["window_fill"] == 30 and stream["checks"] == 0 for stream in streams)


async def test_labels_are_attributed_to_the_version_that_predicted_them() -> None:
    rng = np.random.default_rng(22)
    service = service_with()
    records = prediction_records(rng, 2)
    await service.observe_inference(inference_event(records[0], sample_id="old", version=1))
    await service.observe_inference(inference_event(records[1], sample_id="new", version=2))

    service.observe_label(labeled_event("new", correct=True))
    service.observe_label(labeled_event("old", correct=False))  # predicted by version 1: stale for the monitor
    service.observe_label(labeled_event("never-seen", correct=True))  # unknown sample: the site's latest version
    service.observe_label(labeled_event("elsewhere", correct=True, site_id="site-z"))  # nothing known there
    unlabeled = labeled_event("new", correct=True).model_copy(update={"predicted_label": None})
    service.observe_label(unlabeled)

    (accuracy,) = service.snapshot()["accuracy"]
    assert (accuracy["model_version"], accuracy["labels_seen"], accuracy["accuracy_overall"]) == (2, 2, 1.0)
    for reason in ("older_version", "unknown_model", "no_prediction"):
        assert metric(service, "edgeloop_drift_labels_skipped_total", {"reason": reason}) == 1, reason


async def test_the_console_view_has_window_fill_statistics_and_alarms_newest_first() -> None:
    rng = np.random.default_rng(23)
    clock = ManualClock()
    service = service_with(clock=clock)
    await feed(service, inference_events(rng, 250))
    await feed(service, inference_events(rng, 120, site_id="site-b", prefix="b"))
    await feed(service, inference_events(rng, 150, darken=0.5, prefix="dark"))

    view = service.snapshot(site_id="site-a")
    (stream,) = view["streams"]
    assert (stream["window_fill"], stream["samples_seen"], stream["reference"]["source"]) == (200, 400, "registry")
    brightness = stream["statistics"]["brightness_mean"]
    assert brightness["ks"]["drifted"] and 0 <= brightness["ks"]["p_value"] < SETTINGS.ks_alpha
    assert brightness["psi"]["statistic"] > brightness["psi"]["threshold"] >= SETTINGS.psi_threshold
    assert view["alarms"] and all(alarm["site_id"] == "site-a" for alarm in view["alarms"])
    assert view["alarms"][0]["training_requested"] is True
    times = [alarm["detected_at"] for alarm in view["alarms"]]
    assert times == sorted(times, reverse=True)
    assert service.snapshot(site_id="site-b")["streams"][0]["window_fill"] == 120
    assert service.snapshot(model_name="other")["streams"] == []


async def test_the_idlest_windows_are_dropped_beyond_max_streams() -> None:
    rng = np.random.default_rng(24)
    service = service_with(policy=replace(POLICY, max_streams=2))
    for site in ("site-a", "site-b", "site-c"):
        await feed(service, inference_events(rng, 5, site_id=site, prefix=site))
    assert [stream["site_id"] for stream in service.snapshot()["streams"]] == ["site-c", "site-b"]


def test_policy_from_settings() -> None:
    policy = drift_policy(Settings(debounce_s=12, request_training=False, adwin_delta=0.01))
    assert policy.debounce == timedelta(seconds=12) and not policy.request_training and policy.adwin_delta == 0.01
