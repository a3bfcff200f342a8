"""The gateway on the real Kafka: ImageReceived in, InferenceCompleted out; model server down -> dead letters."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from edgeloop_common.bus import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import DeadLetter, ImageReceived, InferenceCompleted
from edgeloop_common.settings import CommonSettings
from edgeloop_inference_gateway.app import create_app
from edgeloop_inference_gateway.handlers import inference_event_id
from edgeloop_inference_gateway.settings import Settings
from gateway_fakes import FakeModelClient, FakeResults, image_event, jpeg_bytes, model_server_down, store_blob

from tests.helpers import eventually

pytestmark = pytest.mark.kafka


class Observer:
    """What a downstream service sees on Kafka: InferenceCompleted and DeadLetter events."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.completed: list[tuple[InferenceCompleted, EventContext]] = []
        self.dead: list[DeadLetter] = []
        self.bus = KafkaBus(bootstrap_servers=bootstrap, source="observer", topic_prefix=prefix)
        self.bus.subscribe(InferenceCompleted, self._completed, group="observer")
        self.bus.subscribe(DeadLetter, self._dead, group="observer-dead")

    async def _completed(self, event: InferenceCompleted, context: EventContext) -> None:
        self.completed.append((event, context))

    async def _dead(self, event: DeadLetter, context: EventContext) -> None:
        self.dead.append(event)


@pytest.fixture
async def observer(kafka_bootstrap: str, kafka_topics: str) -> AsyncIterator[Observer]:
    watching = Observer(kafka_bootstrap, kafka_topics)
    await watching.bus.start()
    yield watching
    await watching.bus.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[KafkaBus]:
    bus = KafkaBus(bootstrap_servers=kafka_bootstrap, source="ingest", topic_prefix=topic_prefix)
    await bus.start()
    yield bus
    await bus.stop()


def kafka_settings(bootstrap: str, prefix: str) -> Settings:
    common = CommonSettings(mode="distributed", kafka_bootstrap_servers=bootstrap, topic_prefix=prefix)
    return Settings(
        common=common,
        mqtt_results=False,
        max_wait_ms=2.0,
        model_server_rest_url="http://127.0.0.1:9",
    )


async def test_image_events_become_inference_events_on_kafka(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, observer: Observer, producer: KafkaBus
) -> None:
    model = FakeModelClient(version=4)
    results = FakeResults()
    app = create_app(kafka_settings(kafka_bootstrap, topic_prefix), model_client=model, results=results)
    images = [jpeg_bytes((40 * i, 90, 200)) for i in range(3)]
    events = [image_event(store_blob(tmp_path, image), sample_id=f"s-{i}") for i, image in enumerate(images)]
    async with app.router.lifespan_context(app):
        ids = [await producer.publish(event) for event in events]
        await eventually(lambda: len(observer.completed) == 3, what="three InferenceCompleted events", timeout_s=30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text

    by_sample = {event.sample_id: (event, context) for event, context in observer.completed}
    for image_id, image, sent in zip(ids, images, events, strict=True):
        completed, context = by_sample[sent.sample_id]
        assert context.event_id == inference_event_id(image_id)
        assert context.source == "inference-gateway" and context.key == sent.device_id
        assert completed.image == sent.image and completed.model_version == 4
        assert completed.scores == pytest.approx(model.scores_for(image))
    assert len(results.sent) == 3


async def test_model_server_down_dead_letters_every_event_and_says_not_ready(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, observer: Observer, producer: KafkaBus
) -> None:
    model = FakeModelClient(fail_with=model_server_down())
    app = create_app(kafka_settings(kafka_bootstrap, topic_prefix), model_client=model, results=FakeResults())
    ref = store_blob(tmp_path, jpeg_bytes())
    events: list[ImageReceived] = [image_event(ref, sample_id=f"s-{i}", device=f"cam-{i}") for i in range(3)]
    async with app.router.lifespan_context(app):
        for event in events:
            await producer.publish(event)
        await eventually(lambda: len(observer.dead) == 3, what="three dead letters", timeout_s=30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["model_server"] == "not ready"
    assert observer.completed == []
    assert sorted(dead.device_id or "" for dead in observer.dead) == ["cam-0", "cam-1", "cam-2"]
    for dead in observer.dead:
        assert dead.error_type == "ModelServerUnavailableError" and "unreachable" in dead.reason
        assert dead.attempts == 3 and dead.original_topic.endswith("edgeloop.images.received.v1")
        replayed = ImageReceived.model_validate_json(base64.b64decode(dead.original_value_b64))
        assert replayed.image == ref  # the dead letter holds everything needed to replay the event
    assert len(model.calls) == 9
