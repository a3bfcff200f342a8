"""The bridge with the in-process bus and SQLite: what a device and a consumer would observe."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from edgeloop_common.events import DeadLetter, ImageReceived, TelemetryReceived
from edgeloop_ingest.adapters.blobstore import LocalBlobStore
from edgeloop_ingest.adapters.disk_buffer import DiskBuffer
from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine, samples
from edgeloop_ingest.bridge import Bridge, BridgeConfig
from edgeloop_ingest.handlers import device_message_from_mqtt
from edgeloop_ingest.service import IngestService, Outcome
from edgeloop_ingest.validation import ImageLimits
from ingest_testing import SwitchableBus, catdog_photos, gif_bytes, png_declaring, tagged_jpeg, wait_for
from sqlalchemy import func, select


@dataclass
class Rig:
    tmp_path: Path
    bus: SwitchableBus
    service: IngestService
    repository: SqlSampleRepository
    bridge: Bridge
    acked: list[str] = field(default_factory=list)  # message tags, in the order they were acknowledged
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the bridge's metrics (as /metrics shows them)."""
        return self.bridge.metrics.registry.get_sample_value(name, labels) or 0.0

    def send(self, topic: str, payload: bytes, *, tag: str, dup: bool = False) -> None:
        message = device_message_from_mqtt(topic, payload, dup=dup, received_at=datetime.now(UTC))

        def on_durable(outcome: Outcome) -> None:
            self.acked.append(tag)
            self.outcomes[tag] = outcome

        self.bridge.submit(message, on_durable)

    async def wait_acked(self, count: int) -> None:
        await wait_for(lambda: len(self.acked) >= count, what=f"{count} acknowledgements (have {len(self.acked)})")

    def images(self) -> list[ImageReceived]:
        return [event for event in self.bus.events_of(ImageReceived) if isinstance(event, ImageReceived)]

    def sample_rows(self) -> int:
        with self.repository.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(samples)).scalar_one())


def make_bridge(tmp_path: Path, bus: SwitchableBus, **service_options: object) -> tuple[Bridge, IngestService]:
    engine = create_sql_engine(f"sqlite:///{tmp_path / 'ingest.sqlite3'}")
    service = IngestService(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        samples=SqlSampleRepository(engine),
        limits=ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=40_000_000),
        **service_options,  # type: ignore[arg-type]
    )
    config = BridgeConfig(drain_retry_s=0.05, store_retry_s=0.05, shutdown_grace_s=1.0)
    return Bridge(service, bus, DiskBuffer(tmp_path / "buffer.sqlite3"), config), service


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    bus = SwitchableBus()
    await bus.start()
    bridge, service = make_bridge(tmp_path, bus)
    await bridge.start()
    repository = service.samples
    assert isinstance(repository, SqlSampleRepository)
    yield Rig(tmp_path=tmp_path, bus=bus, service=service, repository=repository, bridge=bridge)
    await bridge.stop()
    await bus.stop()


@pytest.fixture(scope="module")
def photos(catdog_train_dir: Path) -> list[Path]:
    return catdog_photos(catdog_train_dir)


async def test_image_is_stored_recorded_and_announced_with_a_blob_reference(rig: Rig, photos: list[Path]) -> None:
    photo = photos[0].read_bytes()
    published_before = rig.metric("edgeloop_bridge_messages_total", kind="image", outcome="published")
    rig.send("dt/edgeloop/site-a/cam-1/image", photo, tag="photo")
    await rig.wait_acked(1)

    [event] = rig.images()
    assert (event.device_id, event.site_id, event.ingress) == ("cam-1", "site-a", "mqtt")
    assert event.image.sha256 == hashlib.sha256(photo).hexdigest()
    assert event.image.uri.startswith("file://")
    assert rig.service.blobs.get(event.image.sha256) == photo
    assert event.mqtt_topic == "dt/edgeloop/site-a/cam-1/image"
    record = rig.repository.get(event.sample_id)
    assert record is not None
    assert (record.sha256, record.size_bytes, record.format) == (event.image.sha256, len(photo), "jpeg")
    assert (record.width, record.height) == (event.width, event.height)
    assert rig.metric("edgeloop_bridge_messages_total", kind="image", outcome="published") == published_before + 1


async def test_the_device_is_acknowledged_only_once_kafka_acknowledged(rig: Rig, photos: list[Path]) -> None:
    rig.bus.hold_acks = True
    rig.send("dt/edgeloop/site-a/cam-1/image", photos[0].read_bytes(), tag="photo")
    await wait_for(lambda: rig.bus.held == 1, what="the event handed to the bus")
    assert rig.acked == []  # stored and handed over, but Kafka has not acknowledged: no PUBACK yet
    await rig.bus.release_acks()
    await rig.wait_acked(1)
    assert rig.acked == ["photo"]


async def test_hostile_payloads_become_dead_letters_and_the_next_message_is_handled(
    rig: Rig, photos: list[Path]
) -> None:
    photo = photos[1].read_bytes()
    hostile = {
        "truncated": ("dt/edgeloop/site-a/cam-1/image", photo[: len(photo) // 2], "truncated"),
        "bomb": ("dt/edgeloop/site-a/cam-1/image", png_declaring(100_000, 100_000), "pixels"),
        "empty": ("dt/edgeloop/site-a/cam-1/image", b"", "empty"),
        "text": ("dt/edgeloop/site-a/cam-1/image", b"hello", "not a JPEG or PNG"),
        "gif": ("dt/edgeloop/site-a/cam-1/image", gif_bytes(), "GIF"),
        "bad-id": ("dt/edgeloop/site-a/cam 1!/image", photo, "device id"),
        "bad-telemetry": ("dt/edgeloop/site-a/cam-1/telemetry", b"{oops", "not JSON"),
    }
    for tag, (topic, payload, _) in hostile.items():
        rig.send(topic, payload, tag=tag)
    rig.send("dt/edgeloop/site-a/cam-1/image", photo, tag="good")
    await rig.wait_acked(len(hostile) + 1)

    assert rig.acked == [*hostile, "good"]  # in arrival order, nothing stuck
    dead_letters = rig.bus.dead_letters
    assert len(dead_letters) == len(hostile)
    for letter, (tag, (topic, payload, words)) in zip(dead_letters, hostile.items(), strict=True):
        assert isinstance(letter, DeadLetter)
        assert words in letter.reason, (tag, letter.reason)
        assert letter.mqtt_topic == topic and letter.original_topic == topic
        assert letter.site_id == "site-a"
        assert base64.b64decode(letter.original_value_b64) == payload
        assert letter.original_size_bytes == len(payload)
        assert letter.service == "ingest"
    assert dead_letters[0].device_id == "cam-1"
    [image] = rig.images()
    assert image.image.sha256 == hashlib.sha256(photo).hexdigest()
    assert rig.sample_rows() == 1


async def test_unknown_topic_shape_is_dead_lettered(rig: Rig) -> None:
    rig.send("dt/edgeloop/site-a/cam-1/video", b"x", tag="video")
    await rig.wait_acked(1)
    [letter] = rig.bus.dead_letters
    assert "neither" in letter.reason and letter.mqtt_topic == "dt/edgeloop/site-a/cam-1/video"


async def test_events_keep_arrival_order_per_device_and_acks_go_out_in_arrival_order(
    rig: Rig, photos: list[Path]
) -> None:
    sent: list[tuple[str, str]] = []  # (device, sha256) in send order
    tags = []
    for sequence in range(30):
        device = f"cam-{sequence % 3}"
        payload = tagged_jpeg(photos[sequence % len(photos)], f"{device}/{sequence}")
        tag = f"{device}/{sequence}"
        rig.send(f"dt/edgeloop/site-a/{device}/image", payload, tag=tag)
        sent.append((device, hashlib.sha256(payload).hexdigest()))
        tags.append(tag)
    await rig.wait_acked(30)
    assert rig.acked == tags
    assert [(event.device_id, event.image.sha256) for event in rig.images()] == sent


async def test_while_kafka_is_unreachable_events_are_buffered_then_drained_in_order(
    rig: Rig, photos: list[Path]
) -> None:
    rig.bus.down = True
    payloads = [tagged_jpeg(photos[i % len(photos)], f"down-{i}") for i in range(10)]
    for i, payload in enumerate(payloads):
        rig.send(f"dt/edgeloop/site-a/cam-{i % 2}/image", payload, tag=f"down-{i}")
    await rig.wait_acked(10)  # acknowledged once on disk, not in Kafka
    assert rig.images() == []
    assert rig.bridge.buffered_count == 10
    assert rig.metric("edgeloop_bridge_buffered_messages") == 10

    rig.bus.down = False
    await wait_for(lambda: rig.bridge.buffered_count == 0, what="the buffer to drain")
    assert [event.image.sha256 for event in rig.images()] == [hashlib.sha256(p).hexdigest() for p in payloads]
    await wait_for(lambda: not rig.bridge.buffering, what="direct publishing again")

    rig.send("dt/edgeloop/site-a/cam-0/image", photos[0].read_bytes(), tag="after")
    await rig.wait_acked(11)
    assert rig.outcomes["after"].publication is not None
    assert len(rig.images()) == 11


async def test_records_in_flight_when_kafka_goes_away_are_buffered_before_newer_ones(
    rig: Rig, photos: list[Path]
) -> None:
    rig.bus.hold_acks = True
    payloads = [tagged_jpeg(photos[0], f"m-{i}") for i in range(8)]
    for i in range(4):
        rig.send("dt/edgeloop/site-a/cam-1/image", payloads[i], tag=f"m-{i}")
    await wait_for(lambda: rig.bus.held == 4, what="4 events handed to the bus")
    rig.bus.down = True
    for i in range(4, 8):
        rig.send("dt/edgeloop/site-a/cam-1/image", payloads[i], tag=f"m-{i}")
    rig.bus.fail_held()  # the 4 in flight time out
    await rig.wait_acked(8)
    assert rig.acked == [f"m-{i}" for i in range(8)]
    buffered = rig.bridge.buffer.head(100)
    assert [b.publication.event.image.sha256 for b in buffered] == [  # type: ignore[attr-defined]
        hashlib.sha256(p).hexdigest() for p in payloads
    ]

    rig.bus.down = False
    rig.bus.hold_acks = False
    await wait_for(lambda: rig.bridge.buffered_count == 0, what="the buffer to drain")
    assert [event.image.sha256 for event in rig.images()] == [hashlib.sha256(p).hexdigest() for p in payloads]


async def test_the_buffer_survives_a_restart_and_drains_at_startup(tmp_path: Path, photos: list[Path]) -> None:
    bus = SwitchableBus()
    bus.down = True
    bridge, _ = make_bridge(tmp_path, bus)
    await bridge.start()
    acked: list[int] = []
    payloads = [tagged_jpeg(photos[1], f"r-{i}") for i in range(5)]
    for i, payload in enumerate(payloads):
        message = device_message_from_mqtt(
            "dt/edgeloop/site-a/cam-1/image", payload, dup=False, received_at=datetime.now(UTC)
        )
        bridge.submit(message, lambda _outcome, i=i: acked.append(i))
    await wait_for(lambda: len(acked) == 5, what="5 buffered acknowledgements")
    await bridge.stop()

    fresh_bus = SwitchableBus()
    restarted, _ = make_bridge(tmp_path, fresh_bus)
    assert restarted.buffer.count() == 5
    await restarted.start()
    try:
        await wait_for(lambda: restarted.buffered_count == 0, what="the buffer to drain after the restart")
        sha256s = [e.image.sha256 for e in fresh_bus.events_of(ImageReceived)]  # type: ignore[attr-defined]
        assert sha256s == [hashlib.sha256(p).hexdigest() for p in payloads]
    finally:
        await restarted.stop()


async def test_a_redelivered_message_reuses_its_sample_and_event_id(rig: Rig, photos: list[Path]) -> None:
    photo = photos[2].read_bytes()
    rig.send("dt/edgeloop/site-a/cam-1/image", photo, tag="first")
    await rig.wait_acked(1)
    rig.send("dt/edgeloop/site-a/cam-1/image", photo, tag="redelivery", dup=True)
    await rig.wait_acked(2)

    first, again = rig.bus.published[-2:]
    assert isinstance(first[0], ImageReceived) and isinstance(again[0], ImageReceived)
    assert again[0].sample_id == first[0].sample_id
    assert again[1].event_id == first[1].event_id  # consumers skip the copy by its event id
    assert rig.sample_rows() == 1


async def test_the_same_picture_sent_twice_is_two_samples(rig: Rig, photos: list[Path]) -> None:
    photo = photos[3].read_bytes()
    rig.send("dt/edgeloop/site-a/cam-1/image", photo, tag="one")
    rig.send("dt/edgeloop/site-a/cam-1/image", photo, tag="two")
    await rig.wait_acked(2)
    one, two = rig.images()
    assert one.sample_id != two.sample_id and one.image.sha256 == two.image.sha256
    assert rig.sample_rows() == 2


async def test_a_redelivery_outside_the_window_is_a_new_sample(rig: Rig, photos: list[Path]) -> None:
    rig.service.redelivery_window = timedelta(0)
    photo = photos[4].read_bytes()
    rig.send("dt/edgeloop/site-a/cam-1/image", photo, tag="one")
    await rig.wait_acked(1)
    rig.send("dt/edgeloop/site-a/cam-1/image", photo, tag="two", dup=True)
    await rig.wait_acked(2)
    assert rig.sample_rows() == 2


async def test_a_dead_letter_keeps_a_prefix_of_a_large_payload_and_says_so(rig: Rig) -> None:
    rig.service.dead_letter_max_payload_bytes = 100
    payload = b"not an image " * 100
    rig.send("dt/edgeloop/site-a/cam-1/image", payload, tag="big")
    await rig.wait_acked(1)
    [letter] = rig.bus.dead_letters
    assert base64.b64decode(letter.original_value_b64) == payload[:100]
    assert letter.original_size_bytes == len(payload)
    assert f"first 100 of {len(payload)} bytes" in letter.reason
    assert letter.original_headers["original_value_truncated"] == "true"


async def test_telemetry_is_published(rig: Rig) -> None:
    rig.send(
        "dt/edgeloop/site-b/thermo-7/telemetry",
        b'{"readings": {"temperature_c": 21.5, "door_open": false}, "measured_at": "2025-06-01T12:00:00+02:00"}',
        tag="t",
    )
    await rig.wait_acked(1)
    [event] = rig.bus.events_of(TelemetryReceived)
    assert isinstance(event, TelemetryReceived)
    assert (event.device_id, event.site_id) == ("thermo-7", "site-b")
    assert event.readings == {"temperature_c": 21.5, "door_open": False}
    assert event.measured_at == datetime(2025, 6, 1, 10, 0, tzinfo=UTC)


async def test_telemetry_machine_event_is_carried_and_a_bad_one_dead_lettered(rig: Rig) -> None:
    rig.send(
        "dt/edgeloop/site-b/pump-3/telemetry",
        b'{"readings": {"vibration_mm_s": 7.9}, "machine_event": "failure"}',
        tag="failure",
    )
    rig.send("dt/edgeloop/site-b/pump-3/telemetry", b'{"readings": {"rpm": 1}, "machine_event": "boom"}', tag="bad")
    await rig.wait_acked(2)
    [event] = rig.bus.events_of(TelemetryReceived)
    assert isinstance(event, TelemetryReceived)
    assert event.machine_event == "failure"
    assert event.readings == {"vibration_mm_s": 7.9}
    [letter] = rig.bus.dead_letters
    assert "'machine_event' must be one of" in letter.reason


def reading(sequence: int) -> bytes:
    return json.dumps({"readings": {"seq": sequence, "temperature_c": 21.5}}).encode()


async def test_a_burst_of_telemetry_goes_to_kafka_as_one_batch_and_is_acknowledged_after_kafka(rig: Rig) -> None:
    rig.bus.hold_acks = True
    tags = [f"t-{i}" for i in range(60)]
    for i, tag in enumerate(tags):  # arrive together: the bridge takes them as one batch
        rig.send(f"dt/edgeloop/site-b/pump-{i % 4}/telemetry", reading(i), tag=tag)
    await wait_for(lambda: rig.bus.held == 60, what="the burst handed to the bus")

    assert rig.bus.batches == [60]  # one hand-over (a record batch per partition on Kafka), not one per message
    assert rig.acked == []  # nothing acknowledged to a device before Kafka acknowledged its event
    await rig.bus.release_acks()
    await rig.wait_acked(60)
    assert rig.acked == tags
    events = [e for e in rig.bus.events_of(TelemetryReceived) if isinstance(e, TelemetryReceived)]
    assert [int(e.readings["seq"] or 0) for e in events] == list(range(60))


async def test_kafka_failing_mid_batch_loses_nothing_and_keeps_each_devices_order(rig: Rig) -> None:
    rig.bus.take_before_down = 25  # Kafka takes 25 events of the burst, then goes away
    tags = [f"t-{i}" for i in range(60)]
    for i, tag in enumerate(tags):
        rig.send(f"dt/edgeloop/site-b/pump-{i % 4}/telemetry", reading(i), tag=tag)
    await rig.wait_acked(60)  # each once durable: in Kafka, or on disk

    assert rig.bus.batches == [60]
    assert rig.acked == tags
    assert len(rig.bus.events_of(TelemetryReceived)) == 25
    assert rig.bridge.buffered_count == 35
    assert rig.metric("edgeloop_bridge_messages_total", kind="telemetry", outcome="buffered") == 35

    rig.bus.take_before_down = None
    rig.bus.down = False
    await wait_for(lambda: rig.bridge.buffered_count == 0, what="the buffer to drain")
    events = [e for e in rig.bus.events_of(TelemetryReceived) if isinstance(e, TelemetryReceived)]
    assert sorted(int(e.readings["seq"] or 0) for e in events) == list(range(60))  # all, each once
    for device in {e.device_id for e in events}:
        sequence = [int(e.readings["seq"] or 0) for e in events if e.device_id == device]
        assert sequence == sorted(sequence), f"{device}'s readings in the order it sent them"


def batch_of(first: int, count: int) -> bytes:
    samples = [
        {"measured_at": f"2026-12-03T10:00:{(first + i) % 60:02d}+00:00", "readings": {"seq": first + i}}
        for i in range(count)
    ]
    return json.dumps({"samples": samples}).encode()


async def test_a_batch_message_is_acknowledged_once_every_sample_is_on_kafka(rig: Rig) -> None:
    rig.bus.hold_acks = True
    rig.send("dt/edgeloop/site-b/pump-1/telemetry", batch_of(0, 30), tag="batch-1")
    rig.send("dt/edgeloop/site-b/pump-1/telemetry", batch_of(30, 30), tag="batch-2")
    await wait_for(lambda: rig.bus.held == 60, what="both batches' samples handed to the bus")

    assert rig.acked == []  # not before Kafka acknowledged every sample of the message
    await rig.bus.release_acks()
    await rig.wait_acked(2)
    assert rig.acked == ["batch-1", "batch-2"]
    events = [e for e in rig.bus.events_of(TelemetryReceived) if isinstance(e, TelemetryReceived)]
    assert [int(e.readings["seq"] or 0) for e in events] == list(range(60))
    assert rig.metric("edgeloop_bridge_messages_total", kind="telemetry", outcome="published") == 2


async def test_kafka_failing_inside_a_batch_keeps_the_rest_on_disk_and_acknowledges_the_message_once(rig: Rig) -> None:
    rig.bus.take_before_down = 12  # Kafka takes 12 of the batch's 30 samples, then goes away
    rig.send("dt/edgeloop/site-b/pump-1/telemetry", batch_of(0, 30), tag="batch")
    await rig.wait_acked(1)  # durable: 12 in Kafka, 18 on disk

    assert rig.acked == ["batch"]
    assert rig.bridge.buffered_count == 18
    rig.bus.take_before_down = None
    rig.bus.down = False
    await wait_for(lambda: rig.bridge.buffered_count == 0, what="the buffer to drain")
    events = [e for e in rig.bus.events_of(TelemetryReceived) if isinstance(e, TelemetryReceived)]
    assert [int(e.readings["seq"] or 0) for e in events] == list(range(30))  # each once, in order


class FlakyBlobStore(LocalBlobStore):
    """A blob store whose disk fails the first ``failures`` writes (full disk, unmounted volume)."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    def put_many(self, blobs: Sequence[tuple[bytes, str]]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().put_many(blobs)


async def test_a_failing_store_holds_messages_back_instead_of_dropping_them(rig: Rig, photos: list[Path]) -> None:
    flaky = FlakyBlobStore(rig.tmp_path / "blobs", failures=3)
    rig.service.blobs = flaky
    rig.send("dt/edgeloop/site-a/cam-1/image", photos[5].read_bytes(), tag="held")
    await wait_for(lambda: flaky.failures < 3, what="a first failed write")
    assert rig.acked == []  # not acknowledged while it could not be stored
    await rig.wait_acked(1)
    assert flaky.failures == 0
    assert len(rig.images()) == 1
    assert rig.sample_rows() == 1
