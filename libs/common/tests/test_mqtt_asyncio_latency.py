"""AsyncMqttClient against the real Mosquitto: a client that receives messages still sends its own at once.

paho leaves Nagle's algorithm on. A device that acknowledges a result (a 4-byte PUBACK the broker answers
with a delayed TCP ACK) and then publishes its next picture had that picture held back by the kernel for
up to 40 ms: publish -> broker grew by ~20 ms per image until the ACK timer fired (bench/e2e_latency.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path

import pytest
from edgeloop_common.mqtt_asyncio import AsyncMqttClient

pytestmark = pytest.mark.mqtt


@pytest.fixture
def photos(catdog_train_dir: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(catdog_train_dir.rglob("*.jpg"))[:20]]


async def test_a_client_that_acknowledges_results_publishes_its_images_without_delay(
    mqtt_broker: tuple[str, int], photos: list[bytes]
) -> None:
    host, port = mqtt_broker
    base = f"test/nagle/{uuid.uuid4().hex[:10]}"
    sent_at: dict[int, float] = {}
    delays_ms: dict[int, float] = {}
    all_seen = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_image(_topic: str, payload: bytes) -> None:
        index = int(payload[:6])
        delays_ms[index] = (time.perf_counter() - sent_at[index]) * 1000.0
        if len(delays_ms) == len(photos):
            all_seen.set()
        # Answer like the gateway: a result the device acknowledges with a PUBACK, before its next image.
        loop.call_later(0.02, responder.publish, f"{base}/result", b'{"top_label": "cat"}')

    device = AsyncMqttClient(host, port)
    observer = AsyncMqttClient(host, port, on_message=on_image)
    responder = AsyncMqttClient(host, port)
    for client in (device, observer, responder):
        await client.connect()
    try:
        await device.subscribe(f"{base}/result", qos=1)
        await observer.subscribe(f"{base}/image", qos=1)
        for index, photo in enumerate(photos):
            sent_at[index] = time.perf_counter()
            device.publish(f"{base}/image", b"%06d" % index + photo, qos=1)
            await asyncio.sleep(0.05)
        await asyncio.wait_for(all_seen.wait(), timeout=10)
    finally:
        for client in (device, observer, responder):
            await client.close()

    # Over loopback a picture reaches a subscriber in about half a millisecond; Nagle made the median ~20 ms.
    delays = [round(delays_ms[index], 1) for index in sorted(delays_ms)]
    assert statistics.median(delays) < 8.0, f"publish -> subscriber delays (ms): {delays}"
