"""`edgeloop device simulate --kind sensor` against the real Mosquitto: readings out, alerts in."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime

import pytest
from edgeloop.device import SensorAlert, SensorSimulator, SensorSimulatorConfig, format_alert
from edgeloop.main import app
from edgeloop_common import topics
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from edgeloop_common.telemetry.features import SIGNALS
from edgeloop_common.telemetry.messages import parse_telemetry_samples
from typer.testing import CliRunner

pytestmark = pytest.mark.mqtt


@pytest.fixture
def site() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


class Listener:
    """A subscriber to the site's telemetry (as ingest would be) that answers some readings with an alert."""

    def __init__(self, host: str, port: int, site: str, *, alert_every: int = 0) -> None:
        self.site = site
        self.alert_every = alert_every
        self.received: list[tuple[str, dict[str, object]]] = []
        self.client = AsyncMqttClient(host, port, on_message=self._on_message)

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe(f"dt/edgeloop/{self.site}/+/telemetry", qos=1)

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_device_topic(topic)
        assert parsed is not None
        self.received.append((parsed.device_id, json.loads(payload)))
        if self.alert_every and len(self.received) % self.alert_every == 0:
            alert = {"failure_probability": 0.91, "threshold": 0.5, "model_name": "machine-failure", "model_version": 1}
            alert_topic = topics.mqtt_topic(topics.MQTT_ALERT, site=parsed.site_id, device=parsed.device_id)
            self.client.publish(alert_topic, json.dumps(alert).encode(), qos=1)


async def test_many_devices_publish_every_reading_with_qos1_and_count_their_alerts(
    mqtt_broker: tuple[str, int], site: str
) -> None:
    host, port = mqtt_broker
    listener = Listener(host, port, site, alert_every=25)
    await listener.start()
    alerts: list[SensorAlert] = []
    config = SensorSimulatorConfig(
        site=site, device="pump", devices=5, rate=100, count=40, seed=3, mqtt_host=host, mqtt_port=port, linger_s=1.0
    )
    simulator = SensorSimulator(config, on_alert=alerts.append)
    try:
        summary = await simulator.run()
        await asyncio.sleep(0.2)
    finally:
        await listener.client.close()
    assert simulator.devices == [f"pump-{i:03d}" for i in range(5)]
    # 40 steps of 5 machines; a machine that failed is silent while it is down.
    assert 150 <= summary.sent <= 200
    assert summary.acked == summary.sent and not summary.timed_out
    assert len(listener.received) == summary.sent  # QoS 1: every reading arrived
    assert {device for device, _ in listener.received} == set(simulator.devices)
    _, message = listener.received[0]
    assert set(message) >= {"measured_at", "readings"}
    assert datetime.fromisoformat(str(message["measured_at"])).tzinfo is not None
    readings = message["readings"]
    assert isinstance(readings, dict) and set(readings) <= set(SIGNALS) and len(readings) >= 4
    events = [m["machine_event"] for _, m in listener.received if "machine_event" in m]
    assert len(events) == summary.failures + summary.maintenances
    # The listener alerted on every 25th reading: the simulator heard them all, on the right devices.
    assert summary.alerts == len(alerts) == summary.sent // 25
    assert sum(summary.alerts_by_device.values()) == summary.alerts
    assert "failure probability 0.910 >= 0.500 (machine-failure v1)" in format_alert(alerts[0])


async def test_the_same_seed_publishes_the_same_values(mqtt_broker: tuple[str, int], site: str) -> None:
    host, port = mqtt_broker
    runs = []
    for seed in (9, 9, 10):
        listener = Listener(host, port, site)
        await listener.start()
        config = SensorSimulatorConfig(
            site=site, device="fan", rate=0, count=30, seed=seed, mqtt_host=host, mqtt_port=port, linger_s=0.3
        )
        await SensorSimulator(config).run()
        await asyncio.sleep(0.2)
        await listener.client.close()
        runs.append([m["readings"] for _, m in listener.received])
    assert len(runs[0]) == 30  # one device, 30 readings as fast as the broker acknowledges
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_cli_publishes_readings_and_prints_the_alerts(mqtt_broker: tuple[str, int], site: str) -> None:
    host, port = mqtt_broker

    async def run_cli() -> tuple[str, int, Listener]:
        listener = Listener(host, port, site, alert_every=10)
        await listener.start()
        args = ["device", "simulate", "--kind", "sensor", "--site", site, "--device", "press", "--devices", "2"]
        args += ["--rate", "50", "--count", "20", "--profile", "hot", "--change", "recalibrated-temperature"]
        args += ["--change-at", "10", "--mqtt-host", host, "--mqtt-port", str(port), "--timeout", "10"]
        result = await asyncio.to_thread(CliRunner().invoke, app, args)
        await listener.client.close()
        return result.output, result.exit_code, listener

    output, code, listener = asyncio.run(run_cli())
    assert code == 0, output
    assert "2 machine(s) (hot, recalibrated-temperature from reading 10)" in output
    sent = len(listener.received)
    assert f"sent {sent} readings, acked {sent}" in output
    assert output.count("ALERT press-") == sent // 10


def test_cli_refuses_unknown_profile_and_change() -> None:
    for option, value in (("--profile", "lunar"), ("--change", "earthquake"), ("--kind", "radar")):
        args = ["device", "simulate", "--kind", "sensor", "--site", "s", "--device", "d", option, value]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and value in result.output
    camera_without_images = CliRunner().invoke(app, ["device", "simulate", "--site", "s", "--device", "d"])
    assert camera_without_images.exit_code == 2 and "--images is needed" in camera_without_images.output


def test_cli_sends_batches_of_samples_the_same_readings_in_fewer_messages(
    mqtt_broker: tuple[str, int], site: str
) -> None:
    host, port = mqtt_broker

    async def run_cli(samples_per_message: int) -> tuple[str, int, Listener]:
        listener = Listener(host, port, site)
        await listener.start()
        args = ["device", "simulate", "--kind", "sensor", "--site", site, "--device", "mill", "--devices", "3"]
        args += ["--rate", "0", "--count", "25", "--seed", "4", "--mqtt-host", host, "--mqtt-port", str(port)]
        args += ["--samples-per-message", str(samples_per_message), "--timeout", "10"]
        result = await asyncio.to_thread(CliRunner().invoke, app, args)
        await asyncio.sleep(0.2)
        await listener.client.close()
        return result.output, result.exit_code, listener

    output, code, batched = asyncio.run(run_cli(10))
    assert code == 0, output
    _, _, single = asyncio.run(run_cli(1))
    # 25 readings of each of 3 machines: batches of 10, 10 and the last 5, each parsed as ingest parses it.
    assert len(batched.received) == 9
    samples = {
        device: [s for d, m in batched.received if d == device for s in parse_telemetry_samples(json.dumps(m).encode())]
        for device in ("mill-000", "mill-001", "mill-002")
    }
    assert [len(each) for each in samples.values()] == [25, 25, 25]
    for device, taken in samples.items():
        assert [s.readings for s in taken] == [m["readings"] for d, m in single.received if d == device]
        times = [s.measured_at for s in taken]
        assert times == sorted(times)  # type: ignore[type-var]
    assert "sent 75 readings, acked 75" in output
