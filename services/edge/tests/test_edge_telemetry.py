"""Sensor telemetry scored at the edge, on the real Mosquitto (the site broker), the real lite model server serving
a failure model (the node group's), and the real ingest on Kafka behind a real HTTP port (the uplink).

Sensors --site MQTT--> edge agent: SiteHistory, :predict, alert back on the site broker
                       edge agent --HTTPS uplink: scores and alerts only--> ingest --Kafka--> TelemetryScored, alerts
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from edgeloop.sensors import SensorRecord, generate_site_history
from edgeloop_common.bus import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import MaintenanceAlert, TelemetryReceived, TelemetryScored
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from edgeloop_common.settings import CommonSettings
from edgeloop_common.telemetry.features import SIGNALS, WINDOW_READINGS
from edgeloop_common.telemetry.history import SiteHistory
from edgeloop_common.topics import MQTT_ALERT, MQTT_TELEMETRY, mqtt_topic
from edgeloop_edge.app import create_app
from edgeloop_edge.settings import Settings
from edgeloop_ingest.app import create_app as create_ingest_app
from edgeloop_ingest.settings import Settings as IngestSettings
from edgeloop_model_server.embedded import RunningServer, serve_in_thread

from tests.helpers import eventually, free_port
from tests.model_fixtures import lite_server_settings
from tests.telemetry_model_fixtures import FAILURE_MODEL_NAME, failure_model_base, failure_model_metadata

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.tf, pytest.mark.slow]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@pytest.fixture(scope="module")
def failure_model() -> Path:
    return failure_model_base()


@pytest.fixture(scope="module")
def failure_server(failure_model: Path) -> Iterator[RunningServer]:
    with serve_in_thread(lite_server_settings(failure_model, FAILURE_MODEL_NAME)) as server:
        yield server


class Recorder:
    """ASGI middleware in front of ingest: keeps every request body that crosses the uplink."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording() -> MutableMapping[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(b"".join(chunks))
            return message

        await self.app(scope, recording, send)


@asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, what="ingest listening", timeout_s=30)
        yield
    finally:
        server.should_exit = True
        await task


def a_failing_machine(site: str) -> list[SensorRecord]:
    """A machine's readings up to and including its first failure, after a long healthy stretch."""
    records = generate_site_history(site, 24, 400, seed=11, profile="temperate")
    by_device: dict[str, list[SensorRecord]] = {}
    for record in records:
        by_device.setdefault(record.device_id, []).append(record)
    candidates = []
    for history in by_device.values():
        events = [i for i, r in enumerate(history) if r.machine_event is not None]
        if events and history[events[0]].machine_event == "failure" and events[0] > 3 * WINDOW_READINGS:
            candidates.append(history[: events[0] + 1])
    return max(candidates, key=len)


async def test_the_edge_keeps_readings_alerts_the_device_and_uplinks_only_scores(
    kafka_bootstrap: str,
    kafka_topics: str,
    mqtt_broker: tuple[str, int],
    failure_server: RunningServer,
    failure_model: Path,
    tmp_path: Path,
) -> None:
    host, port = mqtt_broker
    site = f"edge-tele-{uuid.uuid4().hex[:8]}"
    machine = a_failing_machine(site)
    device = machine[0].device_id
    threshold = float(failure_model_metadata(failure_model)["metrics"]["threshold"])
    common = CommonSettings(
        mode="distributed",
        kafka_bootstrap_servers=kafka_bootstrap,
        mqtt_host=host,
        mqtt_port=port,
        data_dir=tmp_path / "cloud",
        database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
        topic_prefix=kafka_topics,
    )
    ingest = Recorder(create_ingest_app(IngestSettings(common=common, mqtt_enabled=False)))
    ingest_port = free_port()
    edge = create_app(
        Settings(
            site=site,
            mqtt_client_id=f"edge-{site}",
            mqtt_session_expiry_s=120,
            model_name=FAILURE_MODEL_NAME,
            model_server_url=failure_server.rest_url,
            ingest_url=f"http://127.0.0.1:{ingest_port}",
            uplink_retry_max_s=0.5,
            telemetry_alert_threshold=threshold,
            common=CommonSettings(mode="standalone", mqtt_host=host, mqtt_port=port, data_dir=tmp_path / "edge"),
        )
    )
    scored: list[TelemetryScored] = []
    alerts: list[MaintenanceAlert] = []
    raw: list[TelemetryReceived] = []

    async def keep(event: Any, context: EventContext) -> None:
        if event.site_id == site:
            {TelemetryScored: scored, MaintenanceAlert: alerts, TelemetryReceived: raw}[type(event)].append(event)

    observer = KafkaBus(bootstrap_servers=kafka_bootstrap, source="observer", topic_prefix=kafka_topics)
    for kind in (TelemetryScored, MaintenanceAlert, TelemetryReceived):
        observer.subscribe(kind, keep, group=f"observer-{kind.__name__}")
    on_mqtt: list[tuple[str, dict[str, Any]]] = []
    sensors = AsyncMqttClient(
        host, port, client_id=f"sensors-{site}", on_message=lambda t, p: on_mqtt.append((t, json.loads(p)))
    )
    bad = [b"", b"{not json", json.dumps({"readings": {"temperature_c": [1, 2]}}).encode()]
    expected = len(machine) - 1 - WINDOW_READINGS + 1  # the failure reading resets the window, it is not scored
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serving(ingest, ingest_port))
        await stack.enter_async_context(edge.router.lifespan_context(edge))
        await observer.start()
        stack.push_async_callback(observer.stop)
        await sensors.connect()
        stack.push_async_callback(sensors.close)
        await sensors.subscribe(mqtt_topic(MQTT_ALERT, site=site, device="+"))
        topic = mqtt_topic(MQTT_TELEMETRY, site=site, device=device)
        for payload in bad:
            await sensors.publish(topic, payload, qos=1)
        for record in machine:
            message: dict[str, Any] = {"measured_at": record.measured_at.isoformat(), "readings": record.readings}
            if record.machine_event:
                message["machine_event"] = record.machine_event
            await sensors.publish(topic, json.dumps(message).encode(), qos=1)
        await eventually(lambda: len(scored) >= expected, what=f"{expected} TelemetryScored at ingest", timeout_s=60)
        await eventually(lambda: alerts and on_mqtt, what="the alert on the site broker and on Kafka", timeout_s=20)
        rejected = await _get(edge, "/v1/rejected")

    # Every reading stays at the site, in its history (what the federated client trains on), with its label.
    history = SiteHistory(tmp_path / "edge" / f"edge-{site}" / "site-history.sqlite3")
    kept = list(history.device_history(site, device))
    history.close()
    assert [reading.readings for reading in kept] == [record.readings for record in machine]
    assert kept[-1].machine_event == "failure"
    # The bad messages are kept with their reason, like rejected pictures.
    assert len([r for r in rejected if r["device_id"] == device]) == len(bad)
    assert any("not JSON" in str(r["reason"]) for r in rejected)
    # Scores and the alert reached the cloud through the uplink, scored at the edge.
    assert len(scored) == expected
    assert {(e.served_by, e.model_name, e.model_version) for e in scored} == {("edge", FAILURE_MODEL_NAME, 1)}
    assert len(alerts) >= 1 and alerts[0].served_by == "edge" and alerts[0].failure_probability >= threshold
    assert [topic for topic, _ in on_mqtt] == [mqtt_topic(MQTT_ALERT, site=site, device=device)] * len(alerts)
    # Nothing raw crossed: no TelemetryReceived for the site, and no request body carries a reading's values.
    assert raw == []
    assert ingest.bodies, "nothing crossed the uplink"
    crossed = b"".join(ingest.bodies).decode()
    assert '"readings"' not in crossed and '"telemetry_scored"' in crossed
    for signal in SIGNALS:
        assert f'"{signal}":' not in crossed  # features are named {signal}_{stat}; a raw reading would be bare


async def _get(app: Any, path: str) -> Any:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        response = await client.get(path)
        response.raise_for_status()
        return response.json()
