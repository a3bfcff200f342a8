"""Benchmark: MQTT devices -> ingest bridge -> Kafka, against a bare aiokafka producer on the same broker.

    .venv/bin/python bench/bridge.py --messages 10000 --devices 8 --kafka 127.0.0.1:9092 --mqtt-port 1883

In one run, ``--rounds`` times (alternating, so both see the same machine; the median ratio is the figure):

1. **bare**: one aiokafka producer (acks=all, idempotent -- the bus's settings) sends the N payloads
   (20 KiB JPEGs) to a fresh topic, pipelined; rate = N / (first send .. last ack).
2. **bridge**: the ingest service runs in this process (KafkaBus, SQLite, a fresh data folder) and
   ``--devices`` publisher processes, each driving its own paho network loop with a bounded in-flight
   window (docs/architecture.md), publish the same N payloads at QoS 1; rate = N / (first publish .. the bridge's
   last acknowledgement, which it sends only once Kafka acknowledged the event).
3. **check**: every message a device saw acknowledged by the broker must be in Kafka: the ImageReceived
   records on the bridge's topic are read back and counted per device (sha256 per message; no gap).

Prints both rates, the ratio (target >= 0.5, stretch >= 0.8) and the check. Exit status 1 on a gap.
Each payload is a real JPEG (a cat/dog photo re-encoded to about 20 KiB) with a unique comment segment,
so every message is a new blob for the bridge (nothing is skipped as already stored).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PHOTOS = Path(os.environ.get("EDGELOOP_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "catdog"
TARGET_BYTES = 20 * 1024


# -- payloads -----------------------------------------------------------------------------------------------------


def base_jpeg(target_bytes: int = TARGET_BYTES, size: tuple[int, int] = (320, 240)) -> tuple[bytes, str]:
    """A real JPEG of about ``target_bytes``: a cat/dog photo as a QVGA frame (what a small edge camera sends),
    from the photo and quality that land closest to the target."""
    from PIL import Image

    best: tuple[int, bytes, str] | None = None
    for photo in sorted((PHOTOS / "train").glob("*/*.jpg"))[:60]:
        with Image.open(photo) as opened:
            image = opened.convert("RGB").resize(size)
        for quality in range(70, 99, 2):
            out = io.BytesIO()
            image.save(out, "JPEG", quality=quality)
            data = out.getvalue()
            distance = abs(len(data) - target_bytes)
            if best is None or distance < best[0]:
                best = (distance, data, f"{photo.parent.name}/{photo.name} as {size[0]}x{size[1]} q{quality}")
    assert best is not None, f"no photos under {PHOTOS}"
    return best[1], best[2]


def unique_payload(base: bytes, tag: str) -> bytes:
    """``base`` with a JPEG comment (COM) segment right after SOI carrying ``tag``: unique bytes, still valid."""
    text = tag.encode()
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + base[2:]


def device_name(index: int) -> str:
    return f"bench-{index:03d}"


def device_messages(base: bytes, run: str, device: int, count: int) -> list[bytes]:
    return [unique_payload(base, f"{run}/{device_name(device)}/{seq}") for seq in range(count)]


def split(total: int, devices: int) -> list[int]:
    return [total // devices + (1 if index < total % devices else 0) for index in range(devices)]


# -- bare producer ------------------------------------------------------------------------------------------------


async def bare_producer_phase(bootstrap: str, topic: str, payloads: list[tuple[str, bytes]], window: int) -> Phase:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await (await producer.send(topic, b"warm-up", key=b"warm-up"))  # topic created, metadata fetched
        pending: list[asyncio.Future[Any]] = []
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for key, payload in payloads:
            pending.append(await producer.send(topic, payload, key=key.encode()))
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - started
        user_us, system_us = cpu_per_message(usage_before, len(payloads))
    finally:
        await producer.stop()
    return Phase(rate=len(payloads) / elapsed, user_us=user_us, system_us=system_us)


# -- MQTT publishers (one process each) ---------------------------------------------------------------------------


def publisher_process(
    host: str, port: int, base: bytes, tag: str, device: int, count: int, inflight: int, start: Any, results: Any
) -> None:
    """One device: its own paho client and network loop, at most ``inflight`` unacknowledged messages."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    payloads = device_messages(base, tag, device, count)
    topic = f"dt/edgeloop/bench-site/{device_name(device)}/image"
    acked = 0

    def on_publish(_client: Any, _userdata: Any, _mid: int, _reason: Any, _properties: Any) -> None:
        nonlocal acked
        acked += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{tag}-{device_name(device)}")
    client.on_publish = on_publish
    client.max_inflight_messages_set(inflight)
    client.connect(host, port, keepalive=60)
    while not client.is_connected():
        client.loop(0.1)
    start.wait()
    began = time.perf_counter()
    sent = 0
    deadline = time.monotonic() + 600
    while acked < count and time.monotonic() < deadline:
        while sent < count and sent - acked < inflight:
            client.publish(topic, payloads[sent], qos=1)
            sent += 1
        client.loop(0.01)
    elapsed = time.perf_counter() - began
    client.disconnect()
    client.loop(0.1)
    results.put({"device": device, "acked": acked, "sent": sent, "seconds": elapsed})


# -- the bridge ---------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    rate: float
    user_us: float  # this process's CPU per message
    system_us: float
    loop_us: float = 0.0  # of it, on the event loop's thread
    acked_by_broker: dict[int, int] | None = None


def cpu_per_message(before: resource.struct_rusage, count: float) -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    count = max(count, 1)
    return (usage.ru_utime - before.ru_utime) / count * 1e6, (usage.ru_stime - before.ru_stime) / count * 1e6


@asynccontextmanager
async def running_bridge(args: argparse.Namespace, run: str, prefix: str, data_dir: Path) -> AsyncIterator[Any]:
    """The ingest service in this process: KafkaBus, SQLite and blobs in ``data_dir``, MQTT subscriber."""
    from edgeloop_common.bus.kafka import KafkaBus
    from edgeloop_common.settings import CommonSettings
    from edgeloop_ingest.app import create_app
    from edgeloop_ingest.settings import Settings

    settings = Settings(
        mqtt_client_id=f"{run}-ingest",
        mqtt_session_expiry_s=60,
        common=CommonSettings(
            mode="distributed",
            topic_prefix=prefix,
            mqtt_host=args.mqtt_host,
            mqtt_port=args.mqtt_port,
            data_dir=data_dir,
            database_url=f"sqlite:///{data_dir / 'ingest.sqlite3'}",
        ),
    )
    bus = KafkaBus(bootstrap_servers=args.kafka, source="ingest", topic_prefix=prefix)
    await bus.start()
    app = create_app(settings, bus=bus)
    try:
        async with app.router.lifespan_context(app):
            if not await app.state.runtime.subscriber.wait_connected(30):
                raise SystemExit("the bridge did not connect to Mosquitto")
            yield app.state.runtime
    finally:
        await bus.stop()


def acknowledged_by_bridge(runtime: Any) -> float:
    """Image messages the bridge acknowledged (the counter's own samples: the registry's get_sample_value would
    collect every metric and cost more than the bridge)."""
    return sum(
        sample.value
        for metric in runtime.bridge.metrics.bridge_messages.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("kind") == "image"
    )


async def bridge_phase(args: argparse.Namespace, runtime: Any, base: bytes, tag: str) -> Phase:
    """``--devices`` publisher processes send ``--messages`` through the running bridge; rate = N / (first publish
    .. the bridge's last acknowledgement, sent only once Kafka acknowledged the event)."""
    context = mp.get_context("spawn")  # the children must not inherit this process's threads and locks
    start, results = context.Event(), context.Queue()
    counts = split(args.messages, args.devices)
    processes = [
        context.Process(
            target=publisher_process,
            args=(args.mqtt_host, args.mqtt_port, base, tag, device, counts[device], args.inflight, start, results),
            daemon=True,
        )
        for device in range(args.devices)
    ]
    for process in processes:
        process.start()
    try:
        await asyncio.sleep(1.5)  # publishers start, connect and build their payloads
        before = acknowledged_by_bridge(runtime)
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        loop_before = time.thread_time()
        started = time.perf_counter()
        start.set()
        last_progress, last_count = time.monotonic(), before
        while (count := acknowledged_by_bridge(runtime)) - before < args.messages:
            await asyncio.sleep(0.02)
            if count != last_count:
                last_progress, last_count = time.monotonic(), count
            elif time.monotonic() - last_progress > 30:
                print(f"  bridge stalled at {count - before:.0f}/{args.messages}", file=sys.stderr)
                break
        elapsed = time.perf_counter() - started
        done = acknowledged_by_bridge(runtime) - before
        user_us, system_us = cpu_per_message(usage_before, done)
        loop_us = (time.thread_time() - loop_before) / max(done, 1) * 1e6
        reports = [await asyncio.to_thread(results.get, True, 60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return Phase(
        rate=done / elapsed,
        user_us=user_us,
        system_us=system_us,
        loop_us=loop_us,
        acked_by_broker={report["device"]: report["acked"] for report in reports},
    )


# -- the check ----------------------------------------------------------------------------------------------------


async def check_in_kafka(
    bootstrap: str, topic: str, base: bytes, acked: dict[str, dict[int, int]]
) -> tuple[bool, list[str]]:
    """Every message each device saw acknowledged (per round) must be an ImageReceived record (by sha256)."""
    from aiokafka import AIOKafkaConsumer

    expected: dict[str, set[str]] = {}
    for tag, by_device in acked.items():
        for device, count in by_device.items():
            expected.setdefault(device_name(device), set()).update(
                hashlib.sha256(payload).hexdigest() for payload in device_messages(base, tag, device, count)
            )
    total = sum(len(hashes) for hashes in expected.values())
    found: dict[str, set[str]] = {name: set() for name in expected}
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while sum(len(found[name] & expected[name]) for name in found) < total and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                for record in records:
                    body = json.loads(record.value)
                    if body["device_id"] in found:
                        found[body["device_id"]].add(body["image"]["sha256"])
    finally:
        await consumer.stop()
    lines, complete = [], True
    for name in sorted(expected):
        missing = len(expected[name] - found[name])
        complete &= missing == 0
        lines.append(
            f"  {name}: {len(expected[name])} acknowledged by the broker, "
            f"{len(found[name] & expected[name])} in Kafka, {missing} missing"
        )
    return complete, lines


async def delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


# -- main ---------------------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    from edgeloop_common import topics

    run = f"bench-{uuid.uuid4().hex[:8]}"
    prefix = f"{run}."
    base, how = base_jpeg(args.payload_kib * 1024)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"payload: {len(base)} bytes JPEG ({how}) + a unique comment per message")
    print(f"messages: {args.messages} per phase from {args.devices} devices (QoS 1, {args.inflight} in flight each)")
    print(f"kafka {args.kafka}, mosquitto {args.mqtt_host}:{args.mqtt_port}, {args.rounds} round(s)")

    counts = split(args.messages, args.devices)
    data_dir = Path(tempfile.mkdtemp(prefix=f"{run}-", dir=args.data_dir))
    ratios: list[float] = []
    acked: dict[str, dict[int, int]] = {}
    try:
        async with running_bridge(args, run, prefix, data_dir) as runtime:
            for round_number in range(1, args.rounds + 1):
                tag = f"{run}-r{round_number}"
                bare_payloads = [
                    (device_name(device), payload)
                    for device in range(args.devices)
                    for payload in device_messages(base, f"{tag}-bare", device, counts[device])
                ]
                bare = await bare_producer_phase(args.kafka, f"{prefix}bare", bare_payloads, args.bare_window)
                bridged = await bridge_phase(args, runtime, base, tag)
                assert bridged.acked_by_broker is not None
                acked[tag] = bridged.acked_by_broker
                ratios.append(bridged.rate / bare.rate)
                print(
                    f"round {round_number}: bare aiokafka producer {bare.rate:,.0f} msg/s "
                    f"({bare.rate * len(base) / 2**20:,.1f} MiB/s; {bare.user_us + bare.system_us:.0f} us CPU/msg "
                    f"here), MQTT -> bridge -> Kafka {bridged.rate:,.0f} msg/s "
                    f"({bridged.user_us + bridged.system_us:.0f} us CPU/msg here, {bridged.loop_us:.0f} us on the "
                    f"event loop), ratio {ratios[-1]:.2f}"
                )
        ratio = statistics.median(ratios)
        verdict = "stretch met" if ratio >= 0.8 else "target met" if ratio >= 0.5 else "below target"
        print(f"ratio bridge / bare, median of {len(ratios)}: {ratio:.2f} (target >= 0.5, stretch >= 0.8: {verdict})")
        complete, lines = await check_in_kafka(args.kafka, f"{prefix}{topics.IMAGES_RECEIVED}", base, acked)
        print("check: every message a device saw acknowledged is in Kafka" if complete else "check: GAPS FOUND")
        for line in lines:
            print(line)
        return 0 if complete else 1
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        if not args.keep_topics:
            await delete_topics(args.kafka, prefix)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages in each phase")
    parser.add_argument("--devices", type=int, default=8, help="MQTT publisher processes")
    parser.add_argument("--kafka", default=os.environ.get("EDGELOOP_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--mqtt-host", default=os.environ.get("EDGELOOP_MQTT_HOST", "127.0.0.1"))
    parser.add_argument("--mqtt-port", type=int, default=int(os.environ.get("EDGELOOP_MQTT_PORT", "1883")))
    parser.add_argument("--inflight", type=int, default=100, help="unacknowledged messages per publisher")
    parser.add_argument("--payload-kib", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="bare + bridge phases, alternated (median ratio)")
    parser.add_argument("--bare-window", type=int, default=2000, help="sends in flight for the bare producer")
    parser.add_argument("--data-dir", default=None, help="where the bridge's temporary data folder goes")
    parser.add_argument("--keep-topics", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse_args())))
