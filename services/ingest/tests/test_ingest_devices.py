"""Devices: the devices seen (GET /v1/devices) and the capture command (POST /v1/devices/{site}/{device}/capture)
published on the bridge's MQTT connection to the real Mosquitto."""

from __future__ import annotations

import json
import queue
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.app import create_app
from edgeloop_ingest.settings import Settings
from fastapi.testclient import TestClient
from ingest_testing import catdog_photos


def _settings(tmp_path: Path, *, mqtt_enabled: bool, broker: tuple[str, int] = ("127.0.0.1", 1883)) -> Settings:
    return Settings(
        mqtt_enabled=mqtt_enabled,
        mqtt_client_id=f"ingest-test-{uuid.uuid4().hex[:8]}",
        common=CommonSettings(
            mode="standalone",
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
            mqtt_host=broker[0],
            mqtt_port=broker[1],
        ),
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path, mqtt_enabled=False))) as test_client:
        yield test_client


def test_devices_seen_per_site_newest_first(
    tmp_path: Path, sqlite_or_postgres_url: str, catdog_train_dir: Path
) -> None:
    settings = _settings(tmp_path, mqtt_enabled=False)
    settings.common = settings.common.model_copy(update={"mode": "distributed", "database_url": sqlite_or_postgres_url})
    with TestClient(create_app(settings, bus=InProcessBus(source="ingest-test"))) as client:
        photos = catdog_photos(catdog_train_dir, count=3)
        for photo, (site, device) in zip(photos, [("s1", "cam-a"), ("s1", "cam-a"), ("s2", "cam-b")], strict=True):
            where = {"device_id": device, "site_id": site}
            response = client.post("/v1/samples", params=where, content=photo.read_bytes())
            assert response.status_code == 201, response.text
        _assert_devices(client)


def _assert_devices(client: TestClient) -> None:
    devices = client.get("/v1/devices").json()
    assert [(d["site_id"], d["device_id"], d["samples"]) for d in devices] == [("s2", "cam-b", 1), ("s1", "cam-a", 2)]
    assert devices[0]["last_received_at"] >= devices[1]["last_received_at"]
    assert [d["device_id"] for d in client.get("/v1/devices", params={"site_id": "s1"}).json()] == ["cam-a"]
    assert client.get("/v1/devices", params={"limit": 0}).status_code == 422


def test_capture_is_refused_with_the_reason_without_mqtt_or_with_a_bad_id(client: TestClient) -> None:
    off = client.post("/v1/devices/s1/cam-a/capture")
    assert off.status_code == 503
    assert "MQTT is off" in off.json()["detail"]
    bad = client.post("/v1/devices/s1/cam+a/capture")
    assert bad.status_code == 422
    assert "device id" in bad.json()["detail"]


@pytest.mark.mqtt
def test_capture_publishes_the_command_on_the_device_topic(tmp_path: Path, mqtt_broker: tuple[str, int]) -> None:
    host, port = mqtt_broker
    site = f"test-{uuid.uuid4().hex[:8]}"
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{site}")
    device.on_message = lambda _client, _userdata, message: received.put(message)
    device.connect(host, port)
    device.loop_start()
    try:
        subscribed = device.subscribe(f"cmd/edgeloop/{site}/+/capture", qos=1)
        assert subscribed[0] == mqtt.MQTT_ERR_SUCCESS
        with TestClient(create_app(_settings(tmp_path, mqtt_enabled=True, broker=mqtt_broker))) as client:
            response = client.post(f"/v1/devices/{site}/cam-1/capture", json={"requested_by": "console-test"})
            assert response.status_code == 202, response.text
            answer = response.json()
            assert answer["topic"] == f"cmd/edgeloop/{site}/cam-1/capture"
            message = received.get(timeout=10)
        assert message.topic == answer["topic"]
        assert message.qos == 1
        command = json.loads(message.payload)
        assert command["requested_by"] == "console-test"
        assert command["requested_at"].startswith(answer["requested_at"][:19])
    finally:
        device.loop_stop()
        device.disconnect()
