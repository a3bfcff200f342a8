"""`edgeloop device simulate` against the real Mosquitto, with a fake result responder in place of the gateway."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path

import pytest
from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig, format_result, image_files
from edgeloop.main import app
from edgeloop_common import topics
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from typer.testing import CliRunner

pytestmark = pytest.mark.mqtt


class FakeGateway:
    """Answers every image on dt/edgeloop/+/+/image with a result naming the image's hash, after a delay."""

    def __init__(self, host: str, port: int, site: str, delay_s: float = 0.01) -> None:
        self.site = site
        self.delay_s = delay_s
        self.images: list[bytes] = []
        self.client = AsyncMqttClient(host, port, on_message=self._on_image)

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe(f"dt/edgeloop/{self.site}/+/image", qos=1)

    def _on_image(self, topic: str, payload: bytes) -> None:
        self.images.append(payload)
        asyncio.get_running_loop().call_later(self.delay_s, self._answer, topic, payload)

    def _answer(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_device_topic(topic)
        assert parsed is not None
        sha256 = hashlib.sha256(payload).hexdigest()
        result = {
            "image_sha256": sha256,
            "top_label": f"label-{sha256[:6]}",
            "confidence": 0.75,
            "model_name": "fake",
            "model_version": 1,
            "scores": {f"label-{sha256[:6]}": 0.75},
        }
        result_topic = topics.mqtt_topic(topics.MQTT_RESULT, site=parsed.site_id, device=parsed.device_id)
        self.client.publish(result_topic, json.dumps(result).encode(), qos=1)


@pytest.fixture
def site() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_simulator_sends_every_capture_and_matches_each_result(
    mqtt_broker: tuple[str, int], catdog_captures_dir: Path, site: str
) -> None:
    host, port = mqtt_broker
    gateway = FakeGateway(host, port, site)
    await gateway.start()
    results: list[DeviceResult] = []
    config = SimulatorConfig(
        catdog_captures_dir, site, "cam-1", rate=50.0, mqtt_host=host, mqtt_port=port, timeout_s=10
    )
    summary = await DeviceSimulator(config, on_result=results.append).run()
    await gateway.client.close()

    captures = image_files(catdog_captures_dir)
    assert len(captures) == 8
    assert (summary.sent, summary.acked, summary.results, summary.missing) == (8, 8, 8, 0)
    assert not summary.timed_out and summary.unmatched_results == 0
    assert sorted(gateway.images) == sorted(path.read_bytes() for path in captures)
    by_name = {result.image_name: result for result in results}
    assert sorted(by_name) == [path.name for path in captures]
    for path in captures:
        expected = f"label-{hashlib.sha256(path.read_bytes()).hexdigest()[:6]}"
        assert by_name[path.name].top_label == expected
        assert by_name[path.name].latency_ms >= gateway.delay_s * 1000 * 0.9
    assert 0 < summary.percentile_ms(50) <= summary.percentile_ms(99)  # type: ignore[operator]


async def test_capture_command_makes_the_device_send_its_next_image(
    mqtt_broker: tuple[str, int], catdog_captures_dir: Path, site: str
) -> None:
    host, port = mqtt_broker
    gateway = FakeGateway(host, port, site)
    await gateway.start()
    config = SimulatorConfig(
        catdog_captures_dir, site, "cam-2", rate=0.0, count=2, mqtt_host=host, mqtt_port=port, timeout_s=10
    )
    simulator = DeviceSimulator(config)
    running = asyncio.create_task(simulator.run())
    await asyncio.sleep(0.5)
    assert simulator.summary.sent == 0  # rate 0: nothing until asked
    capture_topic = topics.mqtt_topic(topics.MQTT_CAPTURE, site=site, device="cam-2")
    for _ in range(2):
        await gateway.client.publish(capture_topic, b"{}", qos=1)
        await asyncio.sleep(0.1)
    summary = await asyncio.wait_for(running, timeout=15)
    await gateway.client.close()
    assert (summary.captures, summary.sent, summary.results) == (2, 2, 2)
    first_two = [path.read_bytes() for path in image_files(catdog_captures_dir)[:2]]
    assert gateway.images == first_two


async def test_missing_results_time_out_and_are_reported(
    mqtt_broker: tuple[str, int], catdog_captures_dir: Path, site: str
) -> None:
    host, port = mqtt_broker
    config = SimulatorConfig(
        catdog_captures_dir, site, "cam-3", rate=100.0, count=3, mqtt_host=host, mqtt_port=port, timeout_s=0.5
    )
    summary = await DeviceSimulator(config).run()
    assert (summary.sent, summary.acked, summary.results, summary.missing) == (3, 3, 0, 3)
    assert summary.timed_out
    assert "3 missing" in summary.describe()


def test_cli_prints_each_result_and_a_summary(
    mqtt_broker: tuple[str, int], catdog_captures_dir: Path, site: str, tmp_path: Path
) -> None:
    host, port = mqtt_broker

    async def run_cli_with_gateway() -> str:
        gateway = FakeGateway(host, port, site)
        await gateway.start()
        args = [
            "device",
            "simulate",
            "--images",
            str(catdog_captures_dir),
            "--site",
            site,
            "--device",
            "cam-4",
            "--rate",
            "40",
            "--count",
            "3",
            "--mqtt-host",
            host,
            "--mqtt-port",
            str(port),
            "--timeout",
            "10",
        ]
        result = await asyncio.to_thread(CliRunner().invoke, app, args)
        await gateway.client.close()
        assert result.exit_code == 0, result.output
        return result.output

    output = asyncio.run(run_cli_with_gateway())
    names = [path.name for path in image_files(catdog_captures_dir)[:3]]
    for name in names:
        assert f"{name} -> label-" in output
    assert "sent 3, acked 3, results 3 (0 missing)" in output
    assert "p50" in output and "p99" in output


@pytest.mark.parametrize(("quality", "shown"), [("ok", ""), ("too_dark", "  [too_dark: nothing to classify]")])
def test_a_printed_result_says_when_the_picture_has_nothing_to_classify(quality: str, shown: str) -> None:
    payload = {"top_label": "cat", "confidence": 0.66, "quality": quality}
    result = DeviceResult("night.jpg", "cat", 0.66, "edgeloop-classifier", 3, 12.0, payload)
    assert format_result(result) == f"night.jpg -> cat 0.660{shown}  (edgeloop-classifier v3)  12.0 ms"


def test_cli_explains_an_unreachable_broker(catdog_captures_dir: Path) -> None:
    args = [
        "device",
        "simulate",
        "--images",
        str(catdog_captures_dir),
        "--site",
        "s",
        "--device",
        "d",
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        "1",
        "--count",
        "1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unreachable" in result.output
