"""The bridge against the real Mosquitto and Kafka: what a device, an operator with kcat and a consumer observe.

Each test has its own MQTT client id, its own site id (the brokers are shared), its own Kafka topic prefix
(deleted afterwards) and its own data folder.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.v1.kafka import KafkaMessage, from_binary
from edgeloop_common import topics
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.adapters.samples import create_sql_engine, samples
from edgeloop_ingest.app import IngestRuntime, create_app
from edgeloop_ingest.settings import Settings
from ingest_testing import (
    catdog_photos,
    gif_bytes,
    png_declaring,
    publish_qos1,
    tagged_jpeg,
    wait_for,
)
from sqlalchemy import select

from tests.helpers import delete_topics, free_port, read_topic_records

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt]


@dataclass
class Ingest:
    settings: Settings
    runtime: IngestRuntime
    bus: KafkaBus
    site: str

    def topic(self, name: str) -> str:
        return self.bus.topic_name(name)


def ingest_settings(tmp_path: Path, mqtt_broker: tuple[str, int], *, client_id: str, prefix: str) -> Settings:
    return Settings(
        mqtt_client_id=client_id,
        mqtt_session_expiry_s=120,  # a test's session does not outlive it for long on the shared broker
        common=CommonSettings(
            mode="distributed",
            topic_prefix=prefix,
            mqtt_host=mqtt_broker[0],
            mqtt_port=mqtt_broker[1],
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
        ),
    )


@asynccontextmanager
async def running_ingest(settings: Settings, kafka_bootstrap: str, **bus_options: Any) -> AsyncIterator[Ingest]:
    bus = KafkaBus(
        bootstrap_servers=kafka_bootstrap, source="ingest", topic_prefix=settings.common.topic_prefix, **bus_options
    )
    await bus.start()
    app = create_app(settings, bus=bus)
    try:
        async with app.router.lifespan_context(app):
            runtime: IngestRuntime = app.state.runtime
            assert runtime.subscriber is not None
            assert await runtime.subscriber.wait_connected(15), "ingest did not connect to Mosquitto"
            yield Ingest(settings=settings, runtime=runtime, bus=bus, site="")
    finally:
        await bus.stop()


@pytest.fixture
def site() -> str:
    return f"site-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def ingest(
    tmp_path: Path, mqtt_broker: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, site: str
) -> AsyncIterator[Ingest]:
    settings = ingest_settings(
        tmp_path, mqtt_broker, client_id=f"ingest-test-{uuid.uuid4().hex[:8]}", prefix=topic_prefix
    )
    try:
        async with running_ingest(settings, kafka_bootstrap) as running:
            running.site = site
            yield running
    finally:
        await delete_topics(kafka_bootstrap, topic_prefix)


@pytest.fixture(scope="module")
def photos(catdog_train_dir: Path) -> list[Path]:
    return catdog_photos(catdog_train_dir)


def of_site(site: str) -> Any:
    return lambda record: json.loads(record.value).get("site_id") == site


async def mosquitto_pub(broker: tuple[str, int], topic: str, payload_file: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        "-h",
        broker[0],
        "-p",
        str(broker[1]),
        "-q",
        "1",
        "-t",
        topic,
        "-f",
        str(payload_file),
        stderr=subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()


async def test_mosquitto_pub_of_a_photo_gives_one_cloudevent_with_its_sha256(
    ingest: Ingest, mqtt_broker: tuple[str, int], kafka_bootstrap: str, photos: list[Path], tmp_path: Path
) -> None:
    photo = photos[0]
    await mosquitto_pub(mqtt_broker, f"dt/edgeloop/{ingest.site}/cam-1/image", photo)
    telemetry = tmp_path / "telemetry.json"
    telemetry.write_text('{"readings": {"temperature_c": 19.5}}')
    await mosquitto_pub(mqtt_broker, f"dt/edgeloop/{ingest.site}/cam-1/telemetry", telemetry)

    [record] = await read_topic_records(
        kafka_bootstrap, ingest.topic(topics.IMAGES_RECEIVED), count=1, where=of_site(ingest.site)
    )
    headers = dict(record.headers)
    for name in ("ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "content-type", "traceparent"):
        assert name in headers, name
    assert record.key == b"cam-1"
    cloud_event = from_binary(KafkaMessage(headers=headers, key=record.key, value=record.value))
    assert cloud_event["type"] == "io.edgeloop.images.received.v1"
    assert cloud_event["source"] == "ingest"
    body = json.loads(record.value)
    assert body["image"]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert body["device_id"] == "cam-1" and body["mqtt_topic"] == f"dt/edgeloop/{ingest.site}/cam-1/image"
    assert "image_b64" not in body and len(record.value) < 2000  # a reference, never the bytes

    [reading] = await read_topic_records(
        kafka_bootstrap, ingest.topic(topics.TELEMETRY_RECEIVED), count=1, where=of_site(ingest.site)
    )
    assert json.loads(reading.value)["readings"] == {"temperature_c": 19.5}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app_of(ingest)), base_url="http://ingest") as http:
        sample = (await http.get(f"/v1/samples/{body['sample_id']}")).json()
    assert sample["sha256"] == body["image"]["sha256"]


def _app_of(ingest: Ingest) -> Any:
    from edgeloop_ingest import api
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(api.router)
    app.state.service = ingest.runtime.service
    app.state.labeling = ingest.runtime.labeling
    app.state.bridge = ingest.runtime.bridge
    return app


async def test_hostile_payloads_become_dead_letters_with_reasons_and_the_next_photo_goes_through(
    ingest: Ingest, mqtt_broker: tuple[str, int], kafka_bootstrap: str, photos: list[Path]
) -> None:
    photo = photos[1].read_bytes()
    image_topic = f"dt/edgeloop/{ingest.site}/cam-2/image"
    hostile = [
        (image_topic, photo[: len(photo) // 2], "truncated"),
        (image_topic, png_declaring(100_000, 100_000), "pixels"),
        (image_topic, b"", "empty"),
        (image_topic, b"definitely not a picture", "not a JPEG or PNG"),
        (image_topic, gif_bytes(), "GIF"),
        (f"dt/edgeloop/{ingest.site}/cam-2/telemetry", b"{broken json", "not JSON"),
    ]
    await asyncio.to_thread(publish_qos1, *mqtt_broker, [(t, p) for t, p, _ in hostile] + [(image_topic, photo)])

    letters = await read_topic_records(
        kafka_bootstrap, ingest.topic(topics.DEAD_LETTER), count=len(hostile), where=of_site(ingest.site)
    )
    assert len(letters) == len(hostile)
    for record, (topic, payload, words) in zip(letters, hostile, strict=True):
        letter = json.loads(record.value)
        assert words in letter["reason"]
        assert letter["mqtt_topic"] == topic and letter["device_id"] == "cam-2" and letter["site_id"] == ingest.site
        assert base64.b64decode(letter["original_value_b64"]) == payload
        assert dict(record.headers)["ce_type"] == b"io.edgeloop.deadletter.v1"
    [image] = await read_topic_records(
        kafka_bootstrap, ingest.topic(topics.IMAGES_RECEIVED), count=1, where=of_site(ingest.site)
    )
    assert json.loads(image.value)["image"]["sha256"] == hashlib.sha256(photo).hexdigest()


async def test_a_devices_batch_of_samples_becomes_one_event_per_sample_in_order_and_a_bad_batch_one_dead_letter(
    ingest: Ingest, mqtt_broker: tuple[str, int], kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A sensor sending 40 samples in one message (docs/telemetry.md), through mosquitto_pub as any device would."""
    samples = [
        {"measured_at": f"2026-12-03T10:00:{second:02d}+00:00", "readings": {"seq": second, "rpm": 1480 - second}}
        for second in range(40)
    ]
    samples[-1]["machine_event"] = "failure"
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"samples": samples}))
    await mosquitto_pub(mqtt_broker, f"dt/edgeloop/{ingest.site}/pump-9/telemetry", batch)
    bad = {"samples": [*samples[:3], {"measured_at": "2026-12-03T10:01:00+00:00", "readings": {"rpm": [1]}}]}
    batch.write_text(json.dumps(bad))
    await mosquitto_pub(mqtt_broker, f"dt/edgeloop/{ingest.site}/pump-9/telemetry", batch)

    records = await read_topic_records(
        kafka_bootstrap, ingest.topic(topics.TELEMETRY_RECEIVED), count=40, where=of_site(ingest.site)
    )
    events = [json.loads(record.value) for record in records]
    assert [event["readings"]["seq"] for event in events] == list(range(40))  # every sample, in the device's order
    assert {record.key for record in records} == {b"pump-9"}
    assert events[5]["measured_at"].startswith("2026-12-03T10:00:05")
    assert [event.get("machine_event") for event in events][-2:] == [None, "failure"]
    assert len({dict(record.headers)["ce_id"] for record in records}) == 40
    [letter] = await read_topic_records(
        kafka_bootstrap, ingest.topic(topics.DEAD_LETTER), count=1, where=of_site(ingest.site)
    )
    assert "samples[3]: reading 'rpm' must be a number" in json.loads(letter.value)["reason"]
    assert base64.b64decode(json.loads(letter.value)["original_value_b64"]) == batch.read_bytes()  # kept whole


async def _metric(port: int, name: str) -> float | None:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _eventually_metric(
    port: int, name: str, wanted: float, timeout_s: float, process: Any, *, at_least: bool = False
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (value := await _metric(port, name)) != wanted and not (at_least and value is not None and value >= wanted):
        assert process.returncode is None, "ingest exited early"
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} stayed {value}, expected {wanted}")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_messages_unacknowledged_when_the_bridge_is_killed_are_redelivered_and_stored_once(
    tmp_path: Path, mqtt_broker: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, site: str, photos: list[Path]
) -> None:
    client_id = f"ingest-test-{uuid.uuid4().hex[:8]}"
    settings = ingest_settings(tmp_path, mqtt_broker, client_id=client_id, prefix=topic_prefix)
    # A "Kafka" that accepts connections and never answers: the bridge stores each message and waits for an ack.
    # It accepts every connection (a bare listening socket's backlog fills up with the bus's reconnection
    # attempts, and then connecting fails at once, which is "Kafka down", not "Kafka silent").
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    black_hole = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = free_port()
    environment = {
        **os.environ,
        "EDGELOOP_MODE": "distributed",
        "EDGELOOP_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{black_hole.sockets[0].getsockname()[1]}",
        "EDGELOOP_MQTT_HOST": mqtt_broker[0],
        "EDGELOOP_MQTT_PORT": str(mqtt_broker[1]),
        "EDGELOOP_DATA_DIR": str(tmp_path),
        "EDGELOOP_DATABASE_URL": settings.common.database_url,
        "EDGELOOP_INGEST_MQTT_CLIENT_ID": client_id,
        "EDGELOOP_INGEST_MQTT_SESSION_EXPIRY_S": "120",
        "EDGELOOP_TOPIC_PREFIX": topic_prefix,
        "EDGELOOP_INGEST_HTTP_PORT": str(port),
        "EDGELOOP_LOG_LEVEL": "WARNING",
    }
    edgeloop = Path(sys.executable).parent / "edgeloop"
    process = await asyncio.create_subprocess_exec(str(edgeloop), "ingest", env=environment)
    payloads = [tagged_jpeg(photos[i % len(photos)], f"{site}/{i}") for i in range(10)]
    try:
        await _eventually_metric(port, "edgeloop_bridge_mqtt_connected", 1.0, 60, process)
        topic = f"dt/edgeloop/{site}/cam-3/image"
        await asyncio.to_thread(publish_qos1, *mqtt_broker, [(topic, payload) for payload in payloads])
        # at least ours (the shared broker may hand this bridge other tests' images too: it subscribes to every site)
        await _eventually_metric(port, "edgeloop_bridge_in_flight_messages", 10.0, 5, process, at_least=True)
        assert await _metric(port, "edgeloop_bridge_buffered_messages") == 0.0
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)  # a crash: nothing acknowledged, nothing flushed
        await process.wait()
        black_hole.close()
        for writer in held:
            writer.close()

    try:
        async with running_ingest(settings, kafka_bootstrap) as ingest:
            images_topic = ingest.topic(topics.IMAGES_RECEIVED)
            await read_topic_records(kafka_bootstrap, images_topic, count=10, where=of_site(site), timeout_s=60)
            await asyncio.sleep(1.0)  # a second copy of any of them would come right behind
            records = await read_topic_records(
                kafka_bootstrap, images_topic, count=11, where=of_site(site), timeout_s=3, allow_fewer=True
            )
            registry = ingest.runtime.bridge.metrics.registry
            redeliveries = registry.get_sample_value("edgeloop_bridge_redeliveries_total")
    finally:
        await delete_topics(kafka_bootstrap, topic_prefix)
    bodies = [json.loads(record.value) for record in records]
    assert sorted(body["image"]["sha256"] for body in bodies) == sorted(hashlib.sha256(p).hexdigest() for p in payloads)
    engine = create_sql_engine(settings.common.database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(samples.c.sample_id).where(samples.c.site_id == site)).scalars().all()
    engine.dispose()
    assert len(rows) == 10  # stored by the killed bridge, re-used on redelivery: no second sample
    assert {body["sample_id"] for body in bodies} == set(rows)
    # The broker redelivered them flagged DUP, and each was matched to the sample the killed bridge had stored.
    assert redeliveries == 10


def _require_infra_kafka(kafka_bootstrap: str) -> None:
    from edgeloop import infra

    [kafka] = infra.status(["kafka"])
    if not kafka.running or kafka.address != kafka_bootstrap.split(",")[0]:
        pytest.fail(
            f"this test stops and restarts the Kafka that `edgeloop infra up` runs ({kafka.address}, {kafka.state}); "
            f"the tests use {kafka_bootstrap}",
            pytrace=False,
        )


@pytest.mark.slow
async def test_kafka_stopped_then_back_loses_nothing_and_keeps_each_devices_order(
    tmp_path: Path,
    mqtt_broker: tuple[str, int],
    kafka_bootstrap: str,
    topic_prefix: str,
    site: str,
    photos: list[Path],
) -> None:
    from edgeloop import infra

    _require_infra_kafka(kafka_bootstrap)
    settings = ingest_settings(
        tmp_path, mqtt_broker, client_id=f"ingest-test-{uuid.uuid4().hex[:8]}", prefix=topic_prefix
    )
    devices = ["cam-a", "cam-b", "cam-c"]
    sent: dict[str, list[str]] = {device: [] for device in devices}  # sha256s in the order each device sent

    def batch(phase: str, per_device: int) -> list[tuple[str, bytes]]:
        messages = []
        for index in range(per_device):
            for number, device in enumerate(devices):
                payload = tagged_jpeg(photos[(index + number) % len(photos)], f"{site}/{device}/{phase}/{index}")
                sent[device].append(hashlib.sha256(payload).hexdigest())
                messages.append((f"dt/edgeloop/{site}/{device}/image", payload))
        return messages

    try:
        async with running_ingest(settings, kafka_bootstrap, publish_timeout_s=3.0) as ingest:
            bridge = ingest.runtime.bridge
            await asyncio.to_thread(publish_qos1, *mqtt_broker, batch("before", 5))
            await wait_for(lambda: bridge.in_flight == 0, timeout_s=30, what="the first batch acknowledged")

            await infra.stop_async("kafka", echo=lambda _line: None)
            await asyncio.to_thread(publish_qos1, *mqtt_broker, batch("during", 5))
            await wait_for(lambda: bridge.buffered_count >= 15, timeout_s=60, what="15 events buffered on disk")
            assert bridge.in_flight == 0  # every device message acknowledged, from the disk buffer

            await infra.start_async("kafka", echo=lambda _line: None)
            await asyncio.to_thread(publish_qos1, *mqtt_broker, batch("after", 5))
            await wait_for(lambda: bridge.buffered_count == 0, timeout_s=120, what="the disk buffer drained")
            records = await read_topic_records(
                kafka_bootstrap, ingest.topic(topics.IMAGES_RECEIVED), count=45, where=of_site(site), timeout_s=60
            )
    finally:
        if not infra.status(["kafka"])[0].running:
            await infra.start_async("kafka", echo=lambda _line: None)
        await delete_topics(kafka_bootstrap, topic_prefix)

    seen: set[str] = set()
    received: dict[str, list[str]] = {device: [] for device in devices}
    for record in records:
        event_id = dict(record.headers)["ce_id"]
        if event_id in seen:
            continue  # an at-least-once copy: same event id, consumers skip it
        seen.add(event_id)
        body = json.loads(record.value)
        received[body["device_id"]].append(body["image"]["sha256"])
    assert received == sent
