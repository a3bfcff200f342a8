"""The drift service on the real Kafka: InferenceCompleted with darkened image statistics in,
DriftDetected and TrainingRequested out, read by a consumer as the trainer would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest
from drift_samples import REGISTRY, inference_events, reference_stats, registry_client
from edgeloop_common.bus import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import DriftDetected, TrainingRequested
from edgeloop_common.settings import CommonSettings
from edgeloop_drift.app import create_app
from edgeloop_drift.settings import Settings

from tests.helpers import eventually

pytestmark = pytest.mark.kafka


class Trainer:
    """What the trainer sees on Kafka: DriftDetected and TrainingRequested."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.drift: list[tuple[DriftDetected, EventContext]] = []
        self.training: list[tuple[TrainingRequested, EventContext]] = []
        self.bus = KafkaBus(bootstrap_servers=bootstrap, source="trainer", topic_prefix=prefix)
        self.bus.subscribe(DriftDetected, self._drift, group="trainer-drift")
        self.bus.subscribe(TrainingRequested, self._training, group="trainer")

    async def _drift(self, event: DriftDetected, context: EventContext) -> None:
        self.drift.append((event, context))

    async def _training(self, event: TrainingRequested, context: EventContext) -> None:
        self.training.append((event, context))


async def test_darkened_images_on_kafka_come_out_as_drift_and_a_training_request(
    kafka_bootstrap: str, kafka_topics: str
) -> None:
    common = CommonSettings(mode="distributed", kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=kafka_topics)
    settings = Settings(common=common, registry_url=REGISTRY)
    references = registry_client({("catdog", 1): {"reference_stats": reference_stats().model_dump()}})
    app = create_app(settings, references=references)
    trainer = Trainer(kafka_bootstrap, kafka_topics)
    gateway = KafkaBus(bootstrap_servers=kafka_bootstrap, source="inference-gateway", topic_prefix=kafka_topics)
    rng = np.random.default_rng(41)
    normal = inference_events(rng, 400, prefix="normal")
    dark = inference_events(rng, 200, darken=0.5, prefix="dark")
    await gateway.start()
    await trainer.bus.start()
    try:
        async with app.router.lifespan_context(app):
            drift_bus: KafkaBus = app.state.bus
            await drift_bus.wait_until_assigned(timeout_s=30)
            for event in normal:
                await gateway.enqueue(event)
            last = await gateway.enqueue(dark[0])
            for event in dark[1:]:
                last = await gateway.enqueue(event)
            await last
            await eventually(lambda: len(trainer.training) >= 1, what="a TrainingRequested on Kafka", timeout_s=60)
            await eventually(lambda: _samples_seen(app) == 600, what="every InferenceCompleted consumed", timeout_s=60)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://drift") as http:
                view = (await http.get("/v1/drift", params={"site_id": "site-a"})).json()
                ready = await http.get("/readyz")
            await asyncio.sleep(1.0)  # anything late would show up now
    finally:
        await trainer.bus.stop()
        await gateway.stop()

    features = {event.feature for event, _ in trainer.drift}
    assert "brightness_mean" in features
    for event, context in trainer.drift:
        assert (event.model_name, event.model_version, event.site_id) == ("catdog", 1, "site-a")
        assert event.statistic > event.threshold and event.window_size == 200
        assert context.source == "drift"
    (request, context) = trainer.training[0]
    assert len(trainer.training) == 1 and request.reason == "drift" and request.model_name == "catdog"
    evidence = json.loads(request.detail)["evidence"]
    assert {item["feature"] for item in evidence} <= features
    assert context.key == "catdog" and context.source == "drift"
    assert ready.status_code == 200, ready.text
    assert view["alarms"] and view["streams"][0]["reference"]["source"] == "registry"


def _samples_seen(app: Any) -> int:
    service = getattr(app.state, "drift", None)
    if service is None or not service.streams:
        return 0
    return int(sum(stream.window.samples_seen for stream in service.streams.values()))
