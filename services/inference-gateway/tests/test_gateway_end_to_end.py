"""The distributed path, end to end, on the real brokers and the real lite model server.

Simulated device --MQTT--> ingest --Kafka--> gateway --TF Serving REST--> edgeloop model-server
                 <--MQTT result--   gateway --Kafka--> InferenceCompleted (read here as a consumer would)
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig
from edgeloop_common.bus import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import InferenceCompleted
from edgeloop_common.settings import CommonSettings
from edgeloop_inference_gateway.app import create_app
from edgeloop_inference_gateway.settings import Settings
from edgeloop_ingest.app import create_app as create_ingest_app
from edgeloop_ingest.settings import Settings as IngestSettings
from edgeloop_model_server.embedded import RunningServer, serve_in_thread

from tests.helpers import eventually
from tests.model_fixtures import lite_server_settings

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def model_server(trained_model_base: Path, trained_model_name: str) -> Iterator[RunningServer]:
    with serve_in_thread(lite_server_settings(trained_model_base, trained_model_name)) as server:
        yield server


async def test_eight_captures_come_back_classified_over_mqtt_and_kafka(
    kafka_bootstrap: str,
    kafka_topics: str,
    mqtt_broker: tuple[str, int],
    model_server: RunningServer,
    trained_model_name: str,
    catdog_captures_dir: Path,
    tmp_path: Path,
) -> None:
    host, port = mqtt_broker
    site = f"test-{uuid.uuid4().hex[:8]}"
    common = CommonSettings(
        mode="distributed",
        kafka_bootstrap_servers=kafka_bootstrap,
        mqtt_host=host,
        mqtt_port=port,
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
        topic_prefix=kafka_topics,
    )
    ingest = create_ingest_app(
        IngestSettings(
            common=common,
            mqtt_client_id=f"ingest-{uuid.uuid4().hex[:8]}",
            mqtt_session_expiry_s=60,
        )
    )
    gateway = create_app(
        Settings(
            common=common,
            model_server_rest_url=model_server.rest_url,
            model_name=trained_model_name,
        )
    )
    completed: list[InferenceCompleted] = []

    async def observe(event: InferenceCompleted, context: EventContext) -> None:
        completed.append(event)

    observer = KafkaBus(bootstrap_servers=kafka_bootstrap, source="observer", topic_prefix=kafka_topics)
    observer.subscribe(InferenceCompleted, observe, group="observer")
    results: list[DeviceResult] = []
    config = SimulatorConfig(catdog_captures_dir, site, "cam-1", rate=4.0, mqtt_host=host, mqtt_port=port, timeout_s=60)
    async with AsyncExitStack() as stack:
        for app in (ingest, gateway):
            await stack.enter_async_context(app.router.lifespan_context(app))
        await observer.start()
        stack.push_async_callback(observer.stop)
        summary = await DeviceSimulator(config, on_result=results.append).run()
        await eventually(
            lambda: len([e for e in completed if e.site_id == site]) >= 8,
            what="the 8 InferenceCompleted events",
            timeout_s=30,
            interval_s=0.1,
        )

    assert (summary.sent, summary.acked, summary.results, summary.missing) == (8, 8, 8, 0), summary.describe()
    ours = {event.image.sha256: event for event in completed if event.site_id == site}
    assert len(ours) == 8
    for result in results:
        sha256 = hashlib.sha256((catdog_captures_dir / result.image_name).read_bytes()).hexdigest()
        event = ours[sha256]
        assert result.payload["sample_id"] == event.sample_id
        assert (
            (result.model_name, result.model_version)
            == (trained_model_name, 1)
            == (
                event.model_name,
                event.model_version,
            )
        )
        assert set(event.scores) == {"cat", "dog"}
        assert sum(event.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.top_label == event.top_label and result.confidence == pytest.approx(event.confidence)
        assert event.image_stats["width"] > 0
