"""Payloads and helpers for the ingest tests: real photos re-encoded, and hostile payloads built here."""

from __future__ import annotations

import asyncio
import io
import struct
import uuid
import zlib
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from edgeloop_common.bus.base import BusUnavailableError, Outgoing
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import Event
from edgeloop_ingest.validation import PNG_MAGIC
from PIL import Image
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    insert,
)

from tests.helpers import eventually


def catdog_photos(catdog_train_dir: Path, count: int = 6) -> list[Path]:
    cats = sorted((catdog_train_dir / "cat").glob("*.jpg"))[: count // 2]
    dogs = sorted((catdog_train_dir / "dog").glob("*.jpg"))[: count - count // 2]
    return cats + dogs


def tagged_jpeg(photo: Path, tag: str, *, size: tuple[int, int] = (96, 80)) -> bytes:
    """A small real JPEG from ``photo`` whose bytes (and so sha256) are unique to ``tag``."""
    with Image.open(photo) as image:
        small = image.convert("RGB").resize(size)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80, comment=tag.encode())
    return out.getvalue()


def as_png(photo: Path) -> bytes:
    with Image.open(photo) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "PNG")
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header declares ``width`` x ``height`` (a decompression bomb's shape)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 4096, 9)
    return PNG_MAGIC + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with the dimensions in its SOF0/SOF2 header rewritten (the scan data unchanged)."""
    data = bytearray(jpeg)
    position = 2
    while position < len(data):
        marker = data[position + 1]
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[position + 5 : position + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        position += 2 + length
    raise ValueError("no SOF marker found")


def gif_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "GIF")
    return out.getvalue()


def png_with_bad_crc(png: bytes) -> bytes:
    data = bytearray(png)
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF  # a byte of the compressed pixels: the chunk's CRC no longer matches
    return bytes(data)


class SwitchableBus(InProcessBus):
    """An in-process bus that can play "Kafka unreachable" (BusUnavailableError) and hold acknowledgements."""

    def __init__(self) -> None:
        super().__init__(source="ingest")
        self.down = False
        self.hold_acks = False
        self._held: list[tuple[asyncio.Future[str], Event, dict[str, Any]]] = []
        self.batches: list[int] = []  # the size of each enqueue_many call, in order
        self.take_before_down: int | None = None  # Kafka goes away after taking this many more events

    async def enqueue_many(self, outgoing: Sequence[Outgoing]) -> list[asyncio.Future[str]]:
        self.batches.append(len(outgoing))
        return await super().enqueue_many(outgoing)

    async def publish(self, event: Event, **kwargs: Any) -> str:
        if self.down:
            raise BusUnavailableError("Kafka is down (test)")
        return await super().publish(event, **kwargs)

    async def enqueue(self, event: Event, **kwargs: Any) -> Awaitable[str]:
        if self.take_before_down is not None:
            self.down = self.take_before_down <= 0
            self.take_before_down -= 1
        if self.down:
            raise BusUnavailableError("Kafka is down (test)")
        if self.hold_acks:
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._held.append((future, event, kwargs))
            return future
        return await super().enqueue(event, **kwargs)

    async def release_acks(self) -> None:
        """Kafka acknowledges what it held, in order."""
        held, self._held = self._held, []
        for future, event, kwargs in held:
            future.set_result(await super().publish(event, **kwargs))

    def fail_held(self) -> None:
        """What was held times out, as when Kafka goes away with records in flight."""
        held, self._held = self._held, []
        for future, _event, _kwargs in held:
            future.set_exception(BusUnavailableError("Kafka did not acknowledge in time (test)"))

    @property
    def held(self) -> int:
        return len(self._held)

    async def ready(self) -> bool:
        return not self.down


wait_for = partial(eventually, timeout_s=10.0, interval_s=0.01)  # in-process conditions: poll often


# -- real brokers -------------------------------------------------------------------------------------------------


def publish_qos1(host: str, port: int, messages: list[tuple[str, bytes]], *, timeout_s: float = 30.0) -> None:
    """Publish at QoS 1 and return once the broker acknowledged every message (blocking; run it in a thread)."""
    import time

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ingest-test-pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(100)
    client.connect(host, port)
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    deadline = time.monotonic() + timeout_s
    while not all(info.is_published() for info in infos):
        if time.monotonic() > deadline:
            raise AssertionError(f"the broker acknowledged {sum(i.is_published() for i in infos)}/{len(infos)}")
        client.loop(0.05)
    client.disconnect()
    client.loop(0.05)


# -- the schema before migrations ---------------------------------------------------------------------------------


def previous_schema_table(target: MetaData) -> Table:
    """``ingest_samples`` exactly as ingest created it before it had migrations (metadata.create_all)."""
    return Table(
        "ingest_samples",
        target,
        Column("sample_id", String(36), primary_key=True),
        Column("device_id", String(64), nullable=False),
        Column("site_id", String(64), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("size_bytes", BigInteger, nullable=False),
        Column("format", String(8), nullable=False),
        Column("width", Integer, nullable=False),
        Column("height", Integer, nullable=False),
        Column("ingress", String(8), nullable=False),
        Column("mqtt_topic", String(256), nullable=True),
        Column("blob_uri", String(1024), nullable=False),
        Index("ix_ingest_samples_device_sha256", "device_id", "sha256"),
        Index("ix_ingest_samples_received_at", "received_at"),
    )


OLD_ROW = {
    "sample_id": "0b7f7f7e-0000-4000-8000-000000000001",
    "device_id": "cam-old",
    "site_id": "site-old",
    "received_at": datetime(2026, 11, 20, 8, 30, tzinfo=UTC),
    "sha256": "c" * 64,
    "size_bytes": 2048,
    "format": "jpeg",
    "width": 320,
    "height": 240,
    "ingress": "mqtt",
    "mqtt_topic": "dt/edgeloop/site-old/cam-old/image",
    "blob_uri": "file:///var/lib/edgeloop/blobs/cc/cc/" + "c" * 64,
}


def create_previous_schema(engine: Engine) -> None:
    old = MetaData()
    table = previous_schema_table(old)
    old.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(table), [OLD_ROW])
