"""Results to devices through the real Mosquitto: the gateway alone, and device -> ingest -> gateway -> device."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from edgeloop_common import topics
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import InferenceCompleted
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from edgeloop_common.settings import CommonSettings
from edgeloop_inference_gateway.app import create_app
from edgeloop_inference_gateway.settings import Settings
from fastapi import FastAPI
from gateway_fakes import FakeModelClient, image_event, jpeg_bytes, store_blob

pytestmark = pytest.mark.mqtt


def gateway_settings(host: str, port: int, data_dir: Path) -> Settings:
    common = CommonSettings(mode="standalone", mqtt_host=host, mqtt_port=port, data_dir=data_dir)
    return Settings(common=common, max_wait_ms=2.0, model_server_rest_url="http://127.0.0.1:9")


@asynccontextmanager
async def running(*apps: FastAPI) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield


@pytest.mark.parametrize(("picture", "quality"), [("photo", "ok"), ("night frame", "too_dark")])
async def test_result_reaches_the_device_topic(
    mqtt_broker: tuple[str, int], tmp_path: Path, catdog_dir: Path, picture: str, quality: str
) -> None:
    host, port = mqtt_broker
    site = f"test-{uuid.uuid4().hex[:8]}"
    received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    device = AsyncMqttClient(host, port, on_message=lambda topic, payload: received.put_nowait((topic, payload)))
    await device.connect()
    await device.subscribe(topics.mqtt_topic(topics.MQTT_RESULT, site=site, device="cam-1"), qos=1)

    bus = InProcessBus(source="inference-gateway")
    model = FakeModelClient(version=3)
    app = create_app(gateway_settings(host, port, tmp_path), bus=bus, model_client=model)
    night_frame = sorted((catdog_dir / "black-frames").glob("*.jpg"))[0]  # a real camera's, black with a timestamp
    image = jpeg_bytes() if picture == "photo" else night_frame.read_bytes()
    ref = store_blob(tmp_path, image)
    async with running(app):
        await bus.start()
        await bus.publish(image_event(ref, site=site, device="cam-1", sample_id="s-mqtt"))
        topic, payload = await asyncio.wait_for(received.get(), timeout=10)
        await bus.drain()
        await bus.stop()
    await device.close()

    result = json.loads(payload)
    assert topic == f"dt/edgeloop/{site}/cam-1/result"
    assert result["sample_id"] == "s-mqtt" and result["image_sha256"] == ref.sha256
    assert (result["model_name"], result["model_version"]) == ("edgeloop-classifier", 3)
    assert result["scores"] == pytest.approx(model.scores_for(image))
    [completed] = bus.events_of(InferenceCompleted)
    assert result["top_label"] == completed.top_label  # type: ignore[attr-defined]
    assert result["quality"] == completed.quality == quality  # type: ignore[attr-defined]


async def test_simulated_device_gets_a_result_for_every_capture_through_ingest(
    mqtt_broker: tuple[str, int], catdog_captures_dir: Path, tmp_path: Path
) -> None:
    """The standalone loop on the real broker: simulator -> ingest -> in-process bus -> gateway -> simulator."""
    from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig
    from edgeloop_ingest.app import create_app as create_ingest_app
    from edgeloop_ingest.settings import Settings as IngestSettings

    host, port = mqtt_broker
    site = f"test-{uuid.uuid4().hex[:8]}"
    bus = InProcessBus(source="edgeloop")
    model = FakeModelClient(version=2)
    gateway = create_app(gateway_settings(host, port, tmp_path), bus=bus, model_client=model)
    ingest = create_ingest_app(
        IngestSettings(
            common=CommonSettings(mode="standalone", mqtt_host=host, mqtt_port=port, data_dir=tmp_path),
            mqtt_client_id=f"ingest-{uuid.uuid4().hex[:8]}",
            mqtt_session_expiry_s=60,
        ),
        bus=bus,
    )
    results: list[DeviceResult] = []
    config = SimulatorConfig(
        catdog_captures_dir, site, "cam-1", rate=20.0, mqtt_host=host, mqtt_port=port, timeout_s=20
    )
    async with running(ingest, gateway):
        await bus.start()
        summary = await DeviceSimulator(config, on_result=results.append).run()
        await bus.drain()
        await bus.stop()

    assert (summary.sent, summary.acked, summary.results, summary.missing) == (8, 8, 8, 0), summary.describe()
    ours = [event for event in bus.events_of(InferenceCompleted) if event.site_id == site]  # type: ignore[attr-defined]
    assert len(ours) == 8
    by_sha = {event.image.sha256: event for event in ours}  # type: ignore[attr-defined]
    for result in results:
        image = (catdog_captures_dir / result.image_name).read_bytes()
        event = by_sha[hashlib.sha256(image).hexdigest()]
        assert result.top_label == event.top_label and result.model_version == 2
        assert result.payload["scores"] == pytest.approx(model.scores_for(image))
        assert sum(result.payload["scores"].values()) == pytest.approx(1.0, abs=1e-5)
