"""Edge autonomy: a steady camera through an edge agent while the cloud (ingest) goes away and comes back.

What runs (each its own process, as deployed):

* the lite model server (``edgeloop model-server``) on a really trained model: the node group's model server;
* ingest, distributed (``edgeloop ingest`` on the real Kafka and PostgreSQL of ``edgeloop infra up``; its MQTT
  bridge off, so it takes this site's pictures only through the uplink, ``POST /v1/uplink``);
* the site's edge agent (``edgeloop-edge --site S``) on Mosquitto, answering from the model server, its uplink
  to ingest (store and forward; ``--policy``, default the product's ``hard+sample``).

Cameras (``--devices``, each a paho client over MQTT QoS 1) publish unique frames of the catdog photos at a steady
total ``--rate`` for ``--minutes``. In the middle, ingest is stopped (SIGTERM, or SIGKILL with ``--kill``) for
``--offline-minutes`` and started again on the same port. Then the cameras stop and the benchmark waits for the
uplink queue to drain. Reported:

* **answered at the edge while the cloud was down**: of the frames published between ingest's stop and its
  return (ready again), the fraction whose result reached the camera within ``--answer-timeout`` s
  (target >= 99%), and their latency next to the online phases';
* **uplink backlog peak** (``GET /v1/status`` of the agent, every 0.25 s: ``uplink.queued_records``) and the
  queue's depth when ingest returned;
* **time to drain** after ingest is ready again: until the queue is back to its depth before the outage (the
  forwarder's retry backoff, ``EDGELOOP_EDGE_UPLINK_RETRY_MAX_S``, default 10 s, is part of it);
* **reconciliation**: every answered frame's record (its ``sample_id``) asked at ingest
  (``GET /v1/uplink/{record_id}``): present; once (``ingest_uplink_records`` rows per record id in PostgreSQL);
  in order per device (sequences contiguous, and ingest's ``stored_at`` increasing with the sequence); each
  record with ``image_included`` has its sample.

Everything a run creates (its Kafka topics under a fresh prefix, its PostgreSQL rows, the agent's MQTT session, its
folders) is removed at the end (``--keep`` keeps the folders and logs).

    .venv/bin/python bench/edge_offline.py                                  # 10 minutes at 5/s, 4 minutes offline
    .venv/bin/python bench/edge_offline.py --minutes 1 --offline-minutes 0.5   # the short run
    .venv/bin/python bench/edge_offline.py --minutes 3 --offline-minutes 1 --kill --policy all

Targets (issue "Edge agent"): >= 99% of the images answered at the edge while the cloud is down; the backlog
drains after the return; every forwarded record at ingest once, in order per device.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_latency import (
    DATASET,
    RUNS_DIR,
    Spread,
    delete_topics,
    edge_agent,
    end_session,
    image_pool,
    stop_process,
    unique_frame,
    wait_http_ready,
)
from gateway_batching import ensure_model, free_port, model_server

EDGELOOP = Path(sys.executable).parent / "edgeloop"
ANSWERED_TARGET = 0.99


# -- ingest ---------------------------------------------------------------------------------------------------------


@dataclass
class Ingest:
    """``edgeloop ingest`` (distributed) that can be stopped and started again on the same port."""

    env: dict[str, str]
    logs: Path
    url: str
    kill: bool
    process: subprocess.Popen | None = None
    _log_file: Any = None

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.logs / "ingest.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(EDGELOOP), "ingest"],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        assert self.process is not None
        wait_http_ready(self.url, [self.process], timeout_s, self.logs)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.kill and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        else:
            stop_process(self.process)
        self.process = None
        self._log_file.close()


@contextlib.contextmanager
def ingest_service(run: str, folder: Path, kill: bool) -> Iterator[Ingest]:
    port = free_port()
    env = {
        **os.environ,
        "EDGELOOP_MODE": "distributed",
        "EDGELOOP_DATA_DIR": str(folder / "ingest-data"),
        "EDGELOOP_LOG_LEVEL": "WARNING",
        "EDGELOOP_TOPIC_PREFIX": f"bench-{run}.",
        "EDGELOOP_INGEST_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_INGEST_HTTP_PORT": str(port),
        "EDGELOOP_INGEST_MQTT_ENABLED": "false",  # this site's pictures come through the uplink only
        "PYTHONUNBUFFERED": "1",
    }
    ingest = Ingest(env, folder / "logs", f"http://127.0.0.1:{port}", kill)
    ingest.start()
    try:
        ingest.wait_ready()
        yield ingest
    finally:
        ingest.stop()


# -- the cameras ----------------------------------------------------------------------------------------------------


@dataclass
class Frame:
    device: str
    published: float  # time.monotonic() when the publish was handed to the client
    result_at: float | None = None
    served_by: str | None = None
    record_id: str | None = None


@dataclass
class Timeline:
    started: float = 0.0
    offline_at: float | None = None  # ingest stop begun
    back_at: float | None = None  # ingest ready again
    camera_stopped: float | None = None
    queue: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, queued_records)
    queue_steady: int = 0  # the deepest the queue was before the outage
    foreign_results: list[int] = field(default_factory=lambda: [0])  # answers from another stack on the broker


async def cameras(
    site: str,
    model_name: str,
    devices: list[str],
    pool: list[bytes],
    run: str,
    rate: float,
    duration_s: float,
    frames: dict[str, Frame],
    timeline: Timeline,
    answer_timeout_s: float,
) -> None:
    """Publish unique frames at ``rate`` in all (round-robin over ``devices``) for ``duration_s``; collect results."""
    from edgeloop_common.mqtt_asyncio import AsyncMqttClient
    from edgeloop_common.settings import CommonSettings
    from edgeloop_common.topics import MQTT_IMAGE, MQTT_RESULT, mqtt_topic

    unanswered = 0
    all_answered = asyncio.Event()
    foreign = timeline.foreign_results

    def on_message(topic: str, payload: bytes) -> None:
        nonlocal unanswered
        now = time.monotonic()
        body = json.loads(payload)
        frame = frames.get(body.get("image_sha256", ""))
        if frame is None or frame.result_at is not None:
            return
        if body.get("model_name") != model_name:  # another stack on the shared broker answered our picture too
            foreign[0] += 1
            return
        frame.result_at, frame.served_by, frame.record_id = now, body.get("served_by"), body.get("sample_id")
        unanswered -= 1
        if unanswered == 0 and timeline.camera_stopped is not None:
            all_answered.set()

    common = CommonSettings()
    client = AsyncMqttClient(common.mqtt_host, common.mqtt_port, on_message=on_message, protocol="5")
    await client.connect()
    try:
        await client.subscribe([mqtt_topic(MQTT_RESULT, site=site, device=device) for device in devices], qos=1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending: set[asyncio.Future[None]] = set()
        index = 0
        while index / rate < duration_s:
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            device = devices[index % len(devices)]
            image = unique_frame(pool[index % len(pool)], f"{run}-{index}")
            frames[hashlib.sha256(image).hexdigest()] = Frame(device, time.monotonic())
            unanswered += 1
            future = client.publish(mqtt_topic(MQTT_IMAGE, site=site, device=device), image, qos=1)
            pending.add(future)
            future.add_done_callback(pending.discard)
            index += 1
        timeline.camera_stopped = time.monotonic()
        if pending:
            await asyncio.wait(pending, timeout=30)
        if unanswered:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_answered.wait(), answer_timeout_s + 5)
    finally:
        await client.close()


async def watch_queue(agent_url: str, timeline: Timeline, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=agent_url, timeout=5) as http:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                status = (await http.get("/v1/status")).json()
                timeline.queue.append((time.monotonic(), int(status["uplink"]["queued_records"])))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def outage(ingest: Ingest, timeline: Timeline, online_s: float, offline_s: float) -> None:
    """Ingest stopped after ``online_s``, started again ``offline_s`` later; ``back_at`` once it is ready."""
    await asyncio.sleep(online_s)
    timeline.offline_at = time.monotonic()
    print(f"  t={timeline.offline_at - timeline.started:5.1f} s: stopping ingest", flush=True)
    await asyncio.to_thread(ingest.stop)
    await asyncio.sleep(max(0.0, timeline.offline_at + offline_s - time.monotonic()))
    print(f"  t={time.monotonic() - timeline.started:5.1f} s: starting ingest again", flush=True)
    await asyncio.to_thread(ingest.start)
    await asyncio.to_thread(ingest.wait_ready)
    timeline.back_at = time.monotonic()
    print(f"  t={timeline.back_at - timeline.started:5.1f} s: ingest ready", flush=True)


async def run_load(
    args: argparse.Namespace, site: str, agent_url: str, ingest: Ingest, pool: list[bytes], run: str
) -> tuple[dict[str, Frame], Timeline, float | None]:
    frames: dict[str, Frame] = {}
    timeline = Timeline(started=time.monotonic())
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch_queue(agent_url, timeline, stop_watch))
    total_s, offline_s = args.minutes * 60.0, args.offline_minutes * 60.0
    devices = [f"cam-{n + 1}" for n in range(args.devices)]
    await asyncio.gather(
        cameras(site, args.model_name, devices, pool, run, args.rate, total_s, frames, timeline, args.answer_timeout),
        outage(ingest, timeline, (total_s - offline_s) / 2, offline_s),
    )
    # Drained: the queue back to its deepest before the outage (records always wait a moment to be forwarded).
    assert timeline.offline_at is not None and timeline.back_at is not None
    before = [depth for at, depth in timeline.queue if at < timeline.offline_at]
    steady = max(before, default=0)
    drained_at: float | None = None
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline:
        after = [(at, depth) for at, depth in timeline.queue if at >= timeline.back_at]
        later = [at for at, depth in after if depth <= steady]
        if later:
            drained_at = later[0]
            if timeline.queue[-1][1] == 0:
                break
        await asyncio.sleep(0.5)
    stop_watch.set()
    await watcher
    timeline.queue_steady = steady
    return frames, timeline, drained_at


# -- reconciliation -------------------------------------------------------------------------------------------------


@dataclass
class Reconciliation:
    records: int = 0
    at_ingest: int = 0
    missing: list[str] = field(default_factory=list)
    rows_more_than_once: int = 0
    rows_for_site: int = 0
    devices_in_order: int = 0
    devices_out_of_order: list[str] = field(default_factory=list)
    sequence_gaps: int = 0
    images_included: int = 0
    samples_for_site: int = 0


async def reconcile(ingest_url: str, frames: dict[str, Frame], site: str) -> Reconciliation:
    answered = [frame for frame in frames.values() if frame.record_id]
    found: dict[str, dict[str, Any]] = {}
    outcome = Reconciliation(records=len(answered))
    async with httpx.AsyncClient(base_url=ingest_url, timeout=10) as http:

        async def one(record_id: str) -> None:
            response = await http.get(f"/v1/uplink/{record_id}")
            if response.status_code == 200:
                found[record_id] = response.json()
            else:
                outcome.missing.append(record_id)

        for start in range(0, len(answered), 20):
            await asyncio.gather(*(one(frame.record_id or "") for frame in answered[start : start + 20]))
    outcome.at_ingest = len(found)
    outcome.images_included = sum(1 for arrival in found.values() if arrival["image_included"])
    by_device: dict[str, list[dict[str, Any]]] = {}
    for arrival in found.values():
        by_device.setdefault(arrival["device_id"], []).append(arrival)
    for device, arrivals in sorted(by_device.items()):
        arrivals.sort(key=lambda arrival: arrival["sequence"])
        sequences = [arrival["sequence"] for arrival in arrivals]
        outcome.sequence_gaps += (sequences[-1] - sequences[0] + 1) - len(set(sequences))
        stored = [datetime.fromisoformat(arrival["stored_at"]) for arrival in arrivals]
        if all(a <= b for a, b in itertools.pairwise(stored)):
            outcome.devices_in_order += 1
        else:
            outcome.devices_out_of_order.append(device)
    rows, more_than_once, samples = await asyncio.to_thread(database_counts, site)
    outcome.rows_for_site, outcome.rows_more_than_once, outcome.samples_for_site = rows, more_than_once, samples
    return outcome


def database_counts(site: str) -> tuple[int, int, int]:
    """(uplink rows of the site, record ids with more than one row, its samples from the uplink) in PostgreSQL."""
    from edgeloop_common.settings import CommonSettings
    from sqlalchemy import create_engine, text

    engine = create_engine(CommonSettings().database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT count(*) FROM ingest_uplink_records WHERE site_id = :site"), {"site": site}
            ).scalar_one()
            repeated = connection.execute(
                text(
                    "SELECT count(*) FROM (SELECT record_id FROM ingest_uplink_records WHERE site_id = :site "
                    "GROUP BY record_id HAVING count(*) > 1) AS repeated"
                ),
                {"site": site},
            ).scalar_one()
            # Through the uplink only: another engineer's cloud stack on the shared broker may store our pictures too.
            samples = connection.execute(
                text("SELECT count(*) FROM ingest_samples WHERE site_id = :site AND ingress = 'edge'"), {"site": site}
            ).scalar_one()
    finally:
        engine.dispose()
    return int(rows), int(repeated), int(samples)


def kafka_bootstrap() -> str:
    from edgeloop_common.settings import CommonSettings

    return CommonSettings().kafka_bootstrap_servers


def delete_rows(site: str) -> None:
    from edgeloop_common.settings import CommonSettings
    from sqlalchemy import create_engine, text

    engine = create_engine(CommonSettings().database_url)
    try:
        with engine.begin() as connection:
            for table in ("ingest_uplink_records", "ingest_samples"):
                connection.execute(text(f"DELETE FROM {table} WHERE site_id = :site"), {"site": site})
    finally:
        engine.dispose()


# -- report ---------------------------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    frames: dict[str, Frame],
    timeline: Timeline,
    drained_at: float | None,
    rec: Reconciliation,
    log_problems: list[str],
) -> dict[str, Any]:
    assert timeline.offline_at is not None and timeline.back_at is not None
    timeout = args.answer_timeout

    def answered(frame: Frame) -> bool:
        return frame.result_at is not None and frame.result_at - frame.published <= timeout

    def latencies(chosen: list[Frame]) -> Spread:
        return Spread.of([(f.result_at - f.published) * 1000.0 for f in chosen if f.result_at is not None])

    down = [f for f in frames.values() if timeline.offline_at <= f.published < timeline.back_at]
    up = [f for f in frames.values() if not timeline.offline_at <= f.published < timeline.back_at]
    answered_down = sum(answered(f) for f in down)
    fraction = answered_down / len(down) if down else float("nan")
    peak = max((depth for _, depth in timeline.queue), default=0)
    at_return = min(timeline.queue, key=lambda point: abs(point[0] - timeline.back_at))[1] if timeline.queue else 0
    drain_s = None if drained_at is None else drained_at - timeline.back_at
    # Forwarding resumed: the first fall of the queue after ingest was back (the forwarder waits out its backoff).
    after = [(at, depth) for at, depth in timeline.queue if at >= timeline.back_at]
    resumed_at = next((b[0] for a, b in itertools.pairwise(after) if b[1] < a[1]), None)
    resumed_s = None if resumed_at is None else resumed_at - timeline.back_at
    peak_after = max((depth for at, depth in after if resumed_at is None or at <= resumed_at), default=at_return)
    drain_rate = (
        peak_after / (drained_at - resumed_at)
        if drained_at is not None and resumed_at is not None and drained_at > resumed_at
        else None
    )
    served = {by: sum(f.served_by == by for f in frames.values()) for by in ("edge", "cloud")}
    reconciled = (
        rec.at_ingest == rec.records
        and not rec.rows_more_than_once
        and rec.rows_for_site == rec.records
        and not rec.devices_out_of_order
        and not rec.sequence_gaps
        and rec.samples_for_site == rec.images_included
    )
    passed = fraction >= ANSWERED_TARGET and drain_s is not None and reconciled
    print(f"\nedge offline: {len(frames)} frames at {args.rate:g}/s from {args.devices} camera(s) over "
          f"{args.minutes:g} min; ingest down {timeline.back_at - timeline.offline_at:.1f} s "
          f"(stopped {'SIGKILL' if args.kill else 'SIGTERM'} at t={timeline.offline_at - timeline.started:.1f} s, "
          f"ready again at t={timeline.back_at - timeline.started:.1f} s); uplink policy {args.policy}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"  answered at the edge while the cloud was down: {answered_down}/{len(down)} = {fraction:.4f} "
          f"(within {timeout:g} s; target >= {ANSWERED_TARGET})")  # fmt: skip
    print(f"  result latency, cloud down: {latencies(down).describe()}")
    print(f"  result latency, cloud up:   {latencies(up).describe()}  ({sum(answered(f) for f in up)}/{len(up)})")
    print(f"  served_by: edge {served['edge']}, cloud {served['cloud']}; results missing "
          f"{sum(f.result_at is None for f in frames.values())}; results from another stack on the broker "
          f"(ignored) {timeline.foreign_results[0]}")  # fmt: skip
    print(f"  uplink backlog: peak {peak} records, {at_return} when ingest was back; depth before the outage "
          f"<= {timeline.queue_steady}")  # fmt: skip
    print("  time to drain after ingest was ready: " + ("not drained" if drain_s is None else f"{drain_s:.1f} s")
          + ("" if resumed_s is None else f"; forwarding resumed after {resumed_s:.1f} s (the retry backoff)")
          + ("" if drain_rate is None else f", then {peak_after} records at {drain_rate:.0f} records/s"))  # fmt: skip
    print(f"  reconciliation: {rec.at_ingest}/{rec.records} answered records at ingest (GET /v1/uplink/{{id}}), "
          f"missing {len(rec.missing)}; PostgreSQL rows {rec.rows_for_site}, ids with more than one row "
          f"{rec.rows_more_than_once}; devices in order {rec.devices_in_order}, out of order "
          f"{len(rec.devices_out_of_order)}, sequence gaps {rec.sequence_gaps}; pictures included "
          f"{rec.images_included}, samples {rec.samples_for_site} -> {'OK' if reconciled else 'FAIL'}")  # fmt: skip
    if log_problems:
        print(f"  the agent logged {len(log_problems)} warning(s)/error(s), e.g.:")
        for line in log_problems[:4]:
            print(f"    {line[:200]}")
    print("  verdict:", "PASS" if passed else "FAIL")
    return {
        "frames": len(frames),
        "cloud_down_s": timeline.back_at - timeline.offline_at,
        "down_frames": len(down),
        "answered_while_down": fraction,
        "latency_down": latencies(down).__dict__,
        "latency_up": latencies(up).__dict__,
        "backlog_peak": peak,
        "backlog_at_return": at_return,
        "drain_s": drain_s,
        "forwarding_resumed_s": resumed_s,
        "drain_records_per_s": drain_rate,
        "reconciliation": rec.__dict__,
        "passed": passed,
    }


# -- main -----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the cameras send")
    parser.add_argument("--offline-minutes", type=float, default=4.0, help="how long ingest is away, mid-run")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second, all cameras together")
    parser.add_argument("--devices", type=int, default=2, help="cameras")
    parser.add_argument("--policy", default="hard+sample", choices=("hard+sample", "all", "hard"))
    parser.add_argument("--kill", action="store_true", help="stop ingest with SIGKILL instead of SIGTERM")
    parser.add_argument("--retry-max-s", type=float, help="EDGELOOP_EDGE_UPLINK_RETRY_MAX_S (default: the agent's)")
    parser.add_argument("--answer-timeout", type=float, default=5.0, help="a result later than this is not answered")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="longest wait for the queue to drain")
    parser.add_argument("--model-base", type=Path, help="model base path (default: train one into .edgeloop/bench)")
    parser.add_argument("--model", help="model name under --model-base")
    parser.add_argument("--images", type=Path, action="append", help="photo folder (default: catdog captures+train)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders and logs")
    args = parser.parse_args()
    if not 0 < args.offline_minutes < args.minutes:
        parser.error("--offline-minutes must be above 0 and below --minutes")
    pool = image_pool(args.images or [DATASET / "captures", DATASET / "train"])
    model_base, model_name = ensure_model(args.model_base, args.model, 1)
    args.model_name = model_name
    run = f"offline-{uuid.uuid4().hex[:8]}"
    site = f"bench-{run}"
    folder = RUNS_DIR / run
    print(f"edge offline benchmark: run {run}, model {model_name}, {args.minutes:g} min at {args.rate:g}/s, "
          f"ingest away {args.offline_minutes:g} min; logs in {folder / 'logs'}", flush=True)  # fmt: skip
    agent_env = {
        "EDGELOOP_EDGE_MODEL_NAME": model_name,
        "EDGELOOP_EDGE_UPLINK_POLICY": args.policy,
    }
    if args.retry_max_s:
        agent_env["EDGELOOP_EDGE_UPLINK_RETRY_MAX_S"] = str(args.retry_max_s)
    client_id = ""
    document: dict[str, Any] = {}
    try:
        with (
            model_server(model_base, model_name, 2) as (rest_url, _grpc),
            ingest_service(run, folder, args.kill) as ingest,
        ):
            agent_env |= {"EDGELOOP_EDGE_MODEL_SERVER_URL": rest_url, "EDGELOOP_EDGE_INGEST_URL": ingest.url}
            with edge_agent(site, folder, agent_env) as agent:
                client_id = agent.client_id
                log_start = agent.log.stat().st_size if agent.log.exists() else 0
                frames, timeline, drained_at = asyncio.run(run_load(args, site, agent.url, ingest, pool, run))
                rec = asyncio.run(reconcile(ingest.url, frames, site))
                with agent.log.open("rb") as log_file:
                    log_file.seek(log_start)
                    lines = log_file.read().decode(errors="replace").splitlines()
                problems = [line for line in lines if " WARNING " in line or " ERROR " in line]
                document = report(args, frames, timeline, drained_at, rec, problems)
    finally:
        for what, step in (
            ("MQTT session", lambda: client_id and end_session(client_id)),
            ("Kafka topics", lambda: asyncio.run(delete_topics(kafka_bootstrap(), f"bench-{run}."))),
            ("PostgreSQL rows", lambda: delete_rows(site)),
        ):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - reported; the other clean-ups still run
                print(f"  note: could not remove the run's {what}: {exc!r}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(document, indent=2, default=str))
    sys.exit(0 if document.get("passed") else 1)


if __name__ == "__main__":
    main()
