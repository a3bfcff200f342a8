"""A consumer killed with SIGKILL in the middle of a batch loses nothing and keeps each device's order."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from common_samples import telemetry_received
from edgeloop_common.bus.kafka import KafkaBus

from tests.helpers import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

EVENTS = 90
DEVICES = 3
SCRIPT = Path(__file__).with_name("kafka_consumer_proc.py")


def _start_consumer(kafka_bootstrap: str, prefix: str, tmp_path: Path, run: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            f"--bootstrap={kafka_bootstrap}",
            f"--prefix={prefix}",
            "--group=crash",
            f"--db={tmp_path / 'consumer.sqlite3'}",
            f"--handled-log={tmp_path / 'handled.log'}",
            "--delay=0.05",
        ],
        stdout=(tmp_path / f"consumer-{run}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def _handled(tmp_path: Path) -> list[tuple[str, str, int]]:
    path = tmp_path / "handled.log"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(event_id, device, int(seq)) for event_id, device, seq in lines]


def _rows(tmp_path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(tmp_path / "consumer.sqlite3") as db:
        return db.execute(query).fetchall()


def _effect_count(tmp_path: Path) -> int:
    try:
        return int(_rows(tmp_path, "SELECT count(*) FROM effects")[0][0])  # type: ignore[call-overload]
    except sqlite3.OperationalError:
        return 0  # the consumer has not created its table yet


async def test_sigkill_mid_batch_loses_nothing(kafka_bootstrap: str, kafka_topics: str, tmp_path: Path) -> None:
    producer = KafkaBus(bootstrap_servers=kafka_bootstrap, source="crash-test", topic_prefix=kafka_topics)
    await producer.start()
    acks = [await producer.enqueue(telemetry_received(f"cam-{seq % DEVICES}", seq=seq)) for seq in range(EVENTS)]
    published = set(await asyncio.gather(*acks))
    await producer.stop()

    victim = _start_consumer(kafka_bootstrap, kafka_topics, tmp_path, run=1)
    try:
        await eventually(lambda: len(_handled(tmp_path)) >= 20, timeout_s=60, what="the first consumer under way")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    handled_before_kill = len(_handled(tmp_path))
    assert 0 < handled_before_kill < EVENTS, "killed in the middle of the work"

    survivor = _start_consumer(kafka_bootstrap, kafka_topics, tmp_path, run=2)
    try:
        await eventually(lambda: _effect_count(tmp_path) == EVENTS, timeout_s=90, what="every event's effect")
    finally:
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=30) == 0, (tmp_path / "consumer-2.log").read_text()[-3000:]

    handled = _handled(tmp_path)
    assert {event_id for event_id, _, _ in handled} == published, "every published event was handled"
    effects = _rows(tmp_path, "SELECT event_id FROM effects")
    assert sorted(row[0] for row in effects) == sorted(published), "each effect recorded once"
    processed = _rows(tmp_path, "SELECT event_id FROM processed_events WHERE consumer_group = 'crash'")
    assert len(processed) == EVENTS
    for device in {device for _, device, _ in handled}:
        calls = [seq for _, d, seq in handled if d == device]  # a redelivery repeats a stretch, never skips
        expected = sorted(set(calls))
        done = 0
        for seq in calls:
            assert expected.index(seq) <= done, f"{device}: seq {seq} handled before seq {expected[done]}"
            done = max(done, expected.index(seq) + 1)
