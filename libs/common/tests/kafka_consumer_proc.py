"""A slow consumer run as a child process by the crash test (test_kafka_crash.py).

It handles TelemetryReceived in a consumer group and, for each event, appends
``event_id device seq`` to a log (every call of the handler, duplicates
included) and records the effect in an ``effects`` table of a SQLite file,
idempotently. The processed-event records live in the same file. SIGTERM
stops it gracefully; the test kills it with SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
from pathlib import Path
from typing import TextIO

from edgeloop_common.bus.base import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import TelemetryReceived
from edgeloop_common.idempotency import SqlProcessedEventStore


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--db", required=True, help="SQLite file: effects and processed events")
    parser.add_argument("--handled-log", required=True)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each event takes")
    return parser.parse_args()


async def consume(args: argparse.Namespace, handled_log: TextIO) -> None:
    effects = sqlite3.connect(args.db)
    effects.execute("CREATE TABLE IF NOT EXISTS effects (event_id TEXT PRIMARY KEY, device_id TEXT, seq INTEGER)")

    async def handle(event: TelemetryReceived, context: EventContext) -> None:
        await asyncio.sleep(args.delay)
        seq = int(event.readings["seq"] or 0)
        handled_log.write(f"{context.event_id} {event.device_id} {seq}\n")
        with effects:
            effects.execute("INSERT OR IGNORE INTO effects VALUES (?, ?, ?)", (context.event_id, event.device_id, seq))

    bus = KafkaBus(
        bootstrap_servers=args.bootstrap,
        source="crash-test",
        topic_prefix=args.prefix,
        processed=SqlProcessedEventStore(f"sqlite:///{args.db}"),
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
    )
    bus.subscribe(TelemetryReceived, handle, group=args.group)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await bus.start()
    await stop.wait()
    await bus.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    arguments = parse_args()
    with Path(arguments.handled_log).open("a", buffering=1) as log_file:  # line-buffered: each line is written at once
        asyncio.run(consume(arguments, log_file))
