"""The drift service as an app on the in-process bus, with a registry stand-in over HTTP."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from drift_samples import REGISTRY, inference_events, labeled_event, reference_stats, registry_client
from edgeloop_common.bus import BusUnavailableError
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import (
    DriftDetected,
    Event,
    InferenceCompleted,
    SampleLabeled,
    TelemetryScored,
    TrainingRequested,
)
from edgeloop_common.settings import CommonSettings
from edgeloop_drift.adapters.registry import RegistryReferences
from edgeloop_drift.app import create_app
from edgeloop_drift.settings import Settings


def drift_settings(tmp_path: Path, **overrides: Any) -> Settings:
    common = CommonSettings(mode="standalone", data_dir=tmp_path)
    return Settings(common=common, registry_url=REGISTRY, **overrides)


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    in_process = InProcessBus(source="tests")
    yield in_process
    await in_process.stop()


async def test_darkened_inferences_in_drift_and_training_requests_out_with_the_console_view(
    tmp_path: Path, bus: InProcessBus
) -> None:
    references = registry_client({("catdog", 1): {"reference_stats": reference_stats().model_dump()}})
    app = create_app(drift_settings(tmp_path), bus=bus, references=references)
    rng = np.random.default_rng(31)
    async with app.router.lifespan_context(app):
        await bus.start()
        for event in inference_events(rng, 400) + inference_events(rng, 200, darken=0.5, prefix="dark"):
            await bus.publish(event)
        await bus.drain()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://drift") as http:
            view = (await http.get("/v1/drift")).json()
            metrics = (await http.get("/metrics")).text
            ready = await http.get("/readyz")
            alive = await http.get("/healthz")
            bad = await http.get("/v1/drift", params={"alarms_limit": -1})

    drift = bus.events_of(DriftDetected)
    training = bus.events_of(TrainingRequested)
    assert any(isinstance(e, DriftDetected) and e.feature == "brightness_mean" for e in drift)
    assert len(training) == 1  # debounced: one request for the site while the drift lasts
    (request,) = training
    assert isinstance(request, TrainingRequested) and request.reason == "drift" and request.model_name == "catdog"
    assert json.loads(request.detail)["evidence"]

    (stream,) = view["streams"]
    assert stream["reference"]["source"] == "registry" and stream["window_fill"] == 200
    assert stream["samples_seen"] == 600
    assert stream["statistics"]["brightness_mean"]["ks"]["drifted"] is True
    assert len(view["alarms"]) == len(drift) and view["alarms"][-1]["training_requested"] is True
    assert 'edgeloop_drift_score{feature="brightness_mean",model="catdog",site="site-a",test="psi"}' in metrics
    assert "edgeloop_drift_training_requests_total" in metrics
    assert ready.status_code == 200 and alive.status_code == 200
    assert bad.status_code == 422 and "alarms_limit" in bad.text


class FlakyBus(InProcessBus):
    """Refuses the first TrainingRequested as a broker that did not acknowledge in time would."""

    def __init__(self) -> None:
        super().__init__(source="tests")
        self.refused = 0

    async def publish(self, event: Event, **kwargs: Any) -> str:
        if isinstance(event, TrainingRequested) and not self.refused:
            self.refused += 1
            raise BusUnavailableError("no acknowledgement within 10 s")
        return await super().publish(event, **kwargs)


async def test_a_failed_publish_is_retried_without_counting_the_event_twice(tmp_path: Path) -> None:
    flaky = FlakyBus()
    references = registry_client({("catdog", 1): {"reference_stats": reference_stats().model_dump()}})
    app = create_app(drift_settings(tmp_path), bus=flaky, references=references)
    rng = np.random.default_rng(32)
    try:
        async with app.router.lifespan_context(app):
            await flaky.start()
            for event in inference_events(rng, 400) + inference_events(rng, 200, darken=0.5, prefix="dark"):
                await flaky.publish(event)
            await flaky.drain()
            view = app.state.drift.snapshot()
    finally:
        await flaky.stop()

    assert flaky.refused == 1 and flaky.dead_letters == []
    assert view["streams"][0]["samples_seen"] == 600  # the retried event went into the window once
    published = [(event, context) for event, context in flaky.published if isinstance(event, DriftDetected)]
    first_ids = {context.event_id for _, context in published}
    assert len(published) > len(first_ids)  # the retry published the same alarms again ...
    assert len(first_ids) == len(view["alarms"])  # ... under the same ids, so consumers skip the repeats
    assert len(flaky.events_of(TrainingRequested)) == 1


async def test_labels_in_the_app_feed_adwin(tmp_path: Path, bus: InProcessBus) -> None:
    app = create_app(drift_settings(tmp_path), bus=bus, references=registry_client({}))
    rng = np.random.default_rng(33)
    events = inference_events(rng, 50)
    async with app.router.lifespan_context(app):
        await bus.start()
        for event in events:
            await bus.publish(event)
        for index, event in enumerate(events):
            await bus.publish(labeled_event(event.sample_id, correct=index % 5 != 0))
        await bus.drain()
        (accuracy,) = app.state.drift.snapshot()["accuracy"]
    assert accuracy["labels_seen"] == 50 and accuracy["accuracy_overall"] == pytest.approx(0.8)


async def test_the_registry_client_says_why_there_is_no_reference(caplog: pytest.LogCaptureFixture) -> None:
    client = registry_client(
        {
            ("catdog", 1): {"reference_stats": reference_stats(count=50).model_dump()},
            ("catdog", 2): {"reference_stats": None},
            ("catdog", 3): {"reference_stats": {"n": 3, "features": {"confidence": ["bright"]}}},
        }
    )
    with caplog.at_level(logging.WARNING, logger="edgeloop_drift.adapters.registry"):
        known = await client.reference_stats("catdog", 1)
        assert known is not None and known.n == 50 and len(known.features["brightness_mean"]) == 50
        assert await client.reference_stats("catdog", 2) is None
        assert await client.reference_stats("catdog", 3) is None
        assert await client.reference_stats("catdog", 4) is None
        unreachable = RegistryReferences("http://127.0.0.1:9", timeout_s=2.0)
        assert await unreachable.reference_stats("catdog", 1) is None
        await unreachable.close()
    assert "catdog:2 has no reference_stats" in caplog.text
    assert "reference_stats of catdog:3 are not valid" in caplog.text
    assert "registry answered 404 for catdog:4" in caplog.text and "has no version 4" in caplog.text
    assert "registry unreachable for catdog:1" in caplog.text


@pytest.mark.parametrize(("overrides", "group"), [({}, "drift"), ({"consumer_group": "drift-blue"}, "drift-blue")])
async def test_the_app_subscribes_its_table_in_its_consumer_group_once_running(
    tmp_path: Path, bus: InProcessBus, overrides: dict[str, str], group: str
) -> None:
    app = create_app(drift_settings(tmp_path, **overrides), bus=bus, references=registry_client({}))
    assert bus.subscriptions == []  # nothing to handle events with before the lifespan built the service
    async with app.router.lifespan_context(app):
        subscribed = [(s.event_cls, s.group) for s in bus.subscriptions]

    # The telemetry group keeps its name: the setting renames the table's first group (the image events').
    assert subscribed == [(InferenceCompleted, group), (SampleLabeled, group), (TelemetryScored, "drift-telemetry")]
