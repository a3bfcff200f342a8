"""Sensor telemetry scored in the cloud, on the real brokers and the real lite model server serving a failure model.

Sensor --MQTT telemetry--> ingest --Kafka TelemetryReceived--> gateway --:predict--> model server
       <--MQTT alert--      gateway --Kafka--> TelemetryScored, MaintenanceAlert (read here as a consumer would)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
from edgeloop.sensors import SensorRecord, generate_site_history
from edgeloop_common.bus import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import MaintenanceAlert, TelemetryScored
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from edgeloop_common.serving import ModelServerProtocol
from edgeloop_common.settings import CommonSettings
from edgeloop_common.telemetry.features import FEATURE_NAMES, WINDOW_READINGS, DeviceWindows
from edgeloop_common.topics import MQTT_ALERT, MQTT_TELEMETRY, mqtt_topic
from edgeloop_inference_gateway.app import create_app
from edgeloop_inference_gateway.settings import Settings
from edgeloop_ingest.app import create_app as create_ingest_app
from edgeloop_ingest.settings import Settings as IngestSettings
from edgeloop_model_server.embedded import RunningServer, serve_in_thread

from tests.helpers import eventually
from tests.model_fixtures import lite_server_settings
from tests.telemetry_model_fixtures import FAILURE_MODEL_NAME, failure_model_base, failure_model_metadata

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def failure_model() -> Path:
    return failure_model_base()


@pytest.fixture(scope="module")
def model_server(failure_model: Path) -> Iterator[RunningServer]:
    with serve_in_thread(lite_server_settings(failure_model, FAILURE_MODEL_NAME)) as server:
        yield server


def until_first_failure(records: list[SensorRecord]) -> dict[str, list[SensorRecord]]:
    """Each device's readings before its first machine event (the part every window sees whole)."""
    by_device: dict[str, list[SensorRecord]] = {}
    stopped: set[str] = set()
    for record in records:
        if record.device_id in stopped:
            continue
        if record.machine_event is not None:
            stopped.add(record.device_id)
            continue
        by_device.setdefault(record.device_id, []).append(record)
    return by_device


def failing_and_healthy(site: str) -> tuple[list[SensorRecord], list[SensorRecord]]:
    """A machine that fails after a few hundred readings and one that runs the whole time without an event."""
    records = generate_site_history(site, 24, 400, seed=11, profile="temperate")
    failed_at: dict[str, int] = {}
    for record in records:
        if record.machine_event == "failure":
            failed_at.setdefault(record.device_id, 0)
    prefixes = until_first_failure(records)
    failing = max(
        (device for device in failed_at if len(prefixes[device]) < 400),
        key=lambda device: len(prefixes[device]),
    )
    events = {record.device_id for record in records if record.machine_event is not None}
    healthy = next(device for device in sorted(prefixes) if device not in events)
    assert len(prefixes[failing]) > 2 * WINDOW_READINGS, "the simulator's failing machine fails too early"
    return prefixes[failing], prefixes[healthy][:200]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])  # the failure model's :predict over either API
async def test_readings_are_scored_and_a_failing_machine_alerts_on_kafka_and_mqtt(
    protocol: ModelServerProtocol,
    kafka_bootstrap: str,
    kafka_topics: str,
    mqtt_broker: tuple[str, int],
    model_server: RunningServer,
    failure_model: Path,
    tmp_path: Path,
) -> None:
    host, port = mqtt_broker
    site = f"tele-{uuid.uuid4().hex[:8]}"
    failing, healthy = failing_and_healthy(site)
    threshold = float(failure_model_metadata(failure_model)["metrics"]["threshold"])
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
        IngestSettings(common=common, mqtt_client_id=f"ingest-{uuid.uuid4().hex[:8]}", mqtt_session_expiry_s=60)
    )
    gateway = create_app(
        Settings(
            common=common,
            model_server_rest_url=model_server.rest_url,
            model_server_protocol=protocol,
            model_server_grpc_target=model_server.grpc_target,
            registry_url="",
            telemetry_alert_threshold=threshold,
        )
    )
    scored: list[TelemetryScored] = []
    alerts: list[MaintenanceAlert] = []

    async def on_scored(event: TelemetryScored, context: EventContext) -> None:
        if event.site_id == site:
            scored.append(event)

    async def on_alert(event: MaintenanceAlert, context: EventContext) -> None:
        if event.site_id == site:
            alerts.append(event)

    observer = KafkaBus(bootstrap_servers=kafka_bootstrap, source="observer", topic_prefix=kafka_topics)
    observer.subscribe(TelemetryScored, on_scored, group="observer-scored")
    observer.subscribe(MaintenanceAlert, on_alert, group="observer-alerts")
    on_mqtt: list[tuple[str, dict[str, object]]] = []
    device_side = AsyncMqttClient(
        host, port, client_id=f"sensors-{site}", on_message=lambda t, p: on_mqtt.append((t, json.loads(p)))
    )
    expected = len(failing) - WINDOW_READINGS + 1 + len(healthy) - WINDOW_READINGS + 1
    async with AsyncExitStack() as stack:
        for app in (ingest, gateway):
            await stack.enter_async_context(app.router.lifespan_context(app))
        await observer.start()
        stack.push_async_callback(observer.stop)
        await device_side.connect()
        stack.push_async_callback(device_side.close)
        await device_side.subscribe(mqtt_topic(MQTT_ALERT, site=site, device="+"))
        for first, second in zip(failing, [*healthy, *[None] * len(failing)], strict=False):
            for record in (first, second):
                if record is None:
                    continue
                payload = {"measured_at": record.measured_at.isoformat(), "readings": record.readings}
                topic = mqtt_topic(MQTT_TELEMETRY, site=site, device=record.device_id)
                await device_side.publish(topic, json.dumps(payload).encode(), qos=1)
        await eventually(lambda: len(scored) >= expected, what=f"{expected} TelemetryScored", timeout_s=60)
        await eventually(lambda: alerts and on_mqtt, what="the alert on Kafka and on MQTT", timeout_s=20)

    failing_id, healthy_id = failing[0].device_id, healthy[0].device_id
    assert len(scored) == expected
    by_device = {device: [e for e in scored if e.device_id == device] for device in (failing_id, healthy_id)}
    assert len(by_device[failing_id]) == len(failing) - WINDOW_READINGS + 1
    # The features are the window's, computed the documented way from the readings the sensor sent.
    windows = DeviceWindows()
    local = [windows.add(site, failing_id, record.readings) for record in failing]
    last = by_device[failing_id][-1]
    assert list(last.features) == list(FEATURE_NAMES)
    np.testing.assert_allclose([last.features[name] for name in FEATURE_NAMES], local[-1], rtol=1e-5)
    assert {(e.model_name, e.model_version, e.served_by, e.threshold) for e in scored} == {
        (FAILURE_MODEL_NAME, 1, "cloud", threshold)
    }
    # The failing machine alerts before it breaks down, and the healthy one does not alert.
    assert {alert.device_id for alert in alerts} == {failing_id}
    first_alert = min(alerts, key=lambda alert: alert.measured_at)
    assert first_alert.failure_probability >= threshold
    assert first_alert.measured_at < failing[-1].measured_at  # ahead of the breakdown
    # Hysteresis: one alert per crossing, not one per reading above the threshold.
    above = sum(1 for e in by_device[failing_id] if e.failure_probability >= threshold)
    assert above > len(alerts) >= 1
    assert all(e.alert for e in by_device[failing_id][-3:])
    # The device got each alert on its alert topic.
    assert {topic for topic, _ in on_mqtt} == {mqtt_topic(MQTT_ALERT, site=site, device=failing_id)}
    assert len(on_mqtt) == len(alerts)
    assert on_mqtt[0][1]["failure_probability"] == pytest.approx(first_alert.failure_probability)
