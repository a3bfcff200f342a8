"""Sensor telemetry figures (issue 14, docs/telemetry.md): scoring throughput and latency, and (added by the
federated part) federated vs centralised training.

Every section runs against the real components, with a failure model trained on the simulator's histories
(``tests/telemetry_model_fixtures.py``, cached) and served by ``edgeloop model-server`` in its own process:

* ``scoring``: the shared scorer (``edgeloop_common.telemetry.scoring``, the gateway's and the edge agent's) in
  this process, fed simulated readings of many devices: its most readings/s (as fast as it takes them), then at a
  fixed rate (``--rate``, 5,000/s) the latency from a reading taken to its probability, p50/p99 (batching wait +
  the ``:predict`` call) and the batch size.
* ``pipeline``: readings/s through ingest -> scoring, as deployed: simulated sensors publish over MQTT (QoS 1) to
  Mosquitto; ``edgeloop ingest`` (its own process) validates and publishes TelemetryReceived on Kafka;
  ``edgeloop inference-gateway`` (its own process) scores them and publishes TelemetryScored on Kafka, read here.
  Run once per ``--samples-per-message`` value: 1, a message per reading; N, each device sends its readings in
  batches of N samples per message (docs/telemetry.md), as devices that wake their radio now and then do.
  Throughput: scored readings / (last TelemetryScored - first publish); latency: publish -> TelemetryScored's
  ``scored_at``, p50/p99 (the sensors stamp ``measured_at`` when they publish); and the CPU time per reading of
  ingest, the gateway and this process (the sensors and the reader; Kafka, Mosquitto and the model server are not
  counted), which says where the time goes on a shared machine better than the rate does.

Target (issue 14): >= 5,000 readings/s through ingest -> scoring on 2 cores, with batching.

    .venv/bin/python bench/telemetry.py                               # scoring and pipeline
    .venv/bin/python bench/telemetry.py --sections federated          # federated vs centralised, FedAvg and FedProx
    .venv/bin/python bench/telemetry.py --sections scoring --rate 5000
    .venv/bin/python bench/telemetry.py --sections pipeline --devices 300 --readings 40000
    .venv/bin/python bench/telemetry.py --sections pipeline --samples-per-message 1,5,10,30

A section is a function of the parsed arguments returning a dict of figures, printed and written into
``--json`` (``SECTIONS``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO_ROOT))
from e2e_latency import delete_topics, end_session, service_process, wait_http_ready  # noqa: E402 - a sibling
from gateway_batching import free_port, model_server  # noqa: E402

from tests.telemetry_model_fixtures import (  # noqa: E402
    FAILURE_MODEL_NAME,
    failure_model_base,
    failure_model_metadata,
)

EDGELOOP = REPO_ROOT / ".venv" / "bin" / "edgeloop"
RUNS_DIR = REPO_ROOT / ".edgeloop" / "bench-telemetry"
TARGET_READINGS_PER_S = 5000.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)] if ordered else float("nan")


def simulated_readings(devices: int, count: int, seed: int = 0) -> list[tuple[str, dict[str, float], str | None]]:
    """``count`` readings of ``devices`` machines of one site, in time order: (device, readings, machine_event)."""
    from edgeloop.sensors import iterate_site

    steps = math.ceil(count / devices) + 30  # failed machines are silent a while
    records = iterate_site("bench-site", devices, steps, seed=seed, profile="temperate")
    out = [(r.device_id, r.readings, r.machine_event) for r in records]
    return out[:count]


# --- scoring: the shared scorer in this process ------------------------------------------------------------------


async def _score(
    rest_url: str,
    readings: list[tuple[str, dict[str, float], str | None]],
    rate: float | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from edgeloop_common.serving import ModelRoute, TfServingRestClient
    from edgeloop_common.telemetry.scoring import NoThresholds, ScoringConfig, TelemetryScorer

    latencies: list[float] = []
    batches: list[int] = []

    async def emit(scored: Any) -> None:
        batches.append(len(scored))

    client = TfServingRestClient(rest_url, timeout_s=30.0)
    route = ModelRoute(FAILURE_MODEL_NAME)
    scorer = TelemetryScorer(
        client,
        NoThresholds(),
        ScoringConfig(served_by="cloud", max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000.0),
        route_for=lambda _site: route,
        emit=emit,
        on_latency=latencies.append,
    )
    scorer.start()
    scored_before = 0
    started = time.perf_counter()
    try:
        for index, (device, values, event) in enumerate(readings):
            if rate is not None and index % 50 == 0:  # paced in slices of 50 readings
                ahead = started + index / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await scorer.add("bench-site", device, values, machine_event=event)
            if index % 256 == 0:
                await asyncio.sleep(0)  # a consumer hands over readings between awaits; let the batcher run
        await scorer.drained()
        elapsed = time.perf_counter() - started
        scored_before = scorer.stats.scored
    finally:
        await scorer.close()
        await client.close()
    return {
        "readings": len(readings),
        "scored": scored_before,
        "seconds": round(elapsed, 3),
        "readings_per_s": round(len(readings) / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "latency_max_ms": round(max(latencies, default=float("nan")) * 1000, 2),
        "mean_batch": round(float(np.mean(batches)), 1) if batches else 0.0,
        "model_calls": scorer.stats.batches,
    }


def scoring_section(args: argparse.Namespace) -> dict[str, Any]:
    readings = simulated_readings(args.devices, args.readings)
    with model_server(args.model_base, FAILURE_MODEL_NAME, args.server_threads) as (rest_url, _grpc):
        asyncio.run(_score(rest_url, readings[: min(len(readings), 3000)], None, args))  # warm-up
        fastest = asyncio.run(_score(rest_url, readings, None, args))
        paced = asyncio.run(_score(rest_url, readings, args.rate, args))
    figures = {"max": fastest, f"at_{int(args.rate)}_per_s": paced}
    print(
        f"scoring (in-process scorer, {args.devices} devices, {len(readings)} readings): "
        f"max {fastest['readings_per_s']:,.0f} readings/s (mean batch {fastest['mean_batch']}); "
        f"at {args.rate:,.0f}/s: p50 {paced['latency_p50_ms']} ms, p99 {paced['latency_p99_ms']} ms "
        f"(max {paced['latency_max_ms']} ms, mean batch {paced['mean_batch']}, "
        f"achieved {paced['readings_per_s']:,.0f}/s)"
    )
    return figures


# --- pipeline: MQTT -> ingest -> Kafka -> gateway -> Kafka ------------------------------------------------------


@contextlib.contextmanager
def services(rest_url: str, grpc_target: str, protocol: str, threshold: float) -> Iterator[dict[str, Any]]:
    run = f"tele-{uuid.uuid4().hex[:8]}"
    run_dir = RUNS_DIR / run
    ingest_port, gateway_port = free_port(), free_port()
    client_id = f"edgeloop-bench-{run}"
    env = {
        **os.environ,
        "EDGELOOP_MODE": "distributed",
        "EDGELOOP_DATA_DIR": str(run_dir / "data"),
        "EDGELOOP_DATABASE_URL": f"sqlite:///{run_dir / 'ingest.sqlite3'}",
        "EDGELOOP_LOG_LEVEL": "WARNING",
        "EDGELOOP_TOPIC_PREFIX": f"bench-{run}.",
        "EDGELOOP_INGEST_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_INGEST_HTTP_PORT": str(ingest_port),
        "EDGELOOP_INGEST_MQTT_CLIENT_ID": client_id,
        "EDGELOOP_INGEST_MQTT_SESSION_EXPIRY_S": "120",
        "EDGELOOP_INFERENCE_GATEWAY_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_INFERENCE_GATEWAY_HTTP_PORT": str(gateway_port),
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_NAME": FAILURE_MODEL_NAME,  # ready once the model server serves it
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL": rest_url,
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_GRPC_TARGET": grpc_target,
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_PROTOCOL": protocol,
        "EDGELOOP_INFERENCE_GATEWAY_MQTT_RESULTS": "true",
        "EDGELOOP_INFERENCE_GATEWAY_REGISTRY_URL": "",
        "EDGELOOP_INFERENCE_GATEWAY_TELEMETRY_ALERT_THRESHOLD": str(threshold),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    logs = run_dir / "logs"
    try:
        with (
            service_process("ingest", [str(EDGELOOP), "ingest"], env, logs) as ingest,
            service_process("inference-gateway", [str(EDGELOOP), "inference-gateway"], env, logs) as gateway,
        ):
            for url in (f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{gateway_port}"):
                wait_http_ready(url, [ingest, gateway], 180.0, logs)
            yield {
                "prefix": env["EDGELOOP_TOPIC_PREFIX"],
                "gateway_url": f"http://127.0.0.1:{gateway_port}",
                "pids": {"ingest": ingest.pid, "gateway": gateway.pid},
            }
    finally:
        with contextlib.suppress(Exception):
            end_session(client_id, env)
        with contextlib.suppress(Exception):
            asyncio.run(
                delete_topics(
                    os.environ.get("EDGELOOP_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), env["EDGELOOP_TOPIC_PREFIX"]
                )
            )


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far; NaN where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _messages(
    readings: list[tuple[str, dict[str, float], str | None]], samples_per_message: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The sensors' messages, in order: a message per reading, or each device's readings in batches of
    ``samples_per_message`` samples (docs/telemetry.md), the last ones flushed at the end. Each stamped now."""
    unsent: dict[str, list[dict[str, Any]]] = {}
    for device, values, event in readings:
        sample: dict[str, Any] = {"measured_at": datetime.now(UTC).isoformat(), "readings": values}
        if event:
            sample["machine_event"] = event
        if samples_per_message == 1:
            yield device, sample
            continue
        batch = unsent.setdefault(device, [])
        batch.append(sample)
        if len(batch) == samples_per_message:
            yield device, {"samples": batch}
            unsent[device] = []
    for device, batch in unsent.items():
        if batch:
            yield device, {"samples": batch}


async def _pipeline(
    prefix: str,
    readings: list[tuple[str, dict[str, float], str | None]],
    expected: int,
    timeout_s: float,
    pids: dict[str, int],
    samples_per_message: int,
) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer
    from edgeloop_common import topics
    from edgeloop_common.mqtt_asyncio import AsyncMqttClient
    from edgeloop_common.settings import CommonSettings

    common = CommonSettings()
    consumer = AIOKafkaConsumer(
        prefix + topics.TELEMETRY_SCORED,
        prefix + topics.TELEMETRY_RECEIVED,
        bootstrap_servers=common.kafka_bootstrap_servers,
        group_id=f"{prefix}bench",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    sensors = AsyncMqttClient(common.mqtt_host, common.mqtt_port, client_id=f"{prefix}sensors", max_inflight=2000)
    await sensors.connect()
    values: list[bytes] = []
    arrived: list[float] = []
    received: list[float] = []  # TelemetryReceived on Kafka: what ingest has done

    async def consume() -> None:
        while len(values) < expected:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            for partition, records in batch.items():
                if partition.topic.endswith(topics.TELEMETRY_RECEIVED):
                    received.extend([now] * len(records))
                    continue
                for record in records:
                    values.append(record.value or b"")
                    arrived.append(now)

    reading = asyncio.create_task(consume())
    await asyncio.sleep(2.0)  # the consumer joins its group before the first reading
    started = time.time()
    # Where the CPU goes (the services' processes, and this one's sensors and reader), per reading.
    cpu_before = {name: process_cpu_s(pid) for name, pid in pids.items()} | {"bench": time.process_time()}
    acks = []
    for index, (device, message) in enumerate(_messages(readings, samples_per_message)):
        acks.append(sensors.publish(f"dt/edgeloop/bench-site/{device}/telemetry", json.dumps(message), qos=1))
        if index % max(1, 200 // samples_per_message) == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*acks)
    published = time.time()
    try:
        await asyncio.wait_for(reading, timeout_s)
    except TimeoutError:
        print(f"  only {len(values)} of {expected} TelemetryScored within {timeout_s:.0f} s")
    finally:
        cpu_after = {name: process_cpu_s(pid) for name, pid in pids.items()} | {"bench": time.process_time()}
        await sensors.close()
        await consumer.stop()
    latencies = []
    for value in values:
        event = json.loads(value)
        latencies.append(
            (datetime.fromisoformat(event["scored_at"]) - datetime.fromisoformat(event["measured_at"])).total_seconds()
        )
    last = max(arrived, default=started)
    ingested = max(received, default=started)
    return {
        "samples_per_message": samples_per_message,
        "readings": len(readings),
        "scored": len(values),
        "publish_seconds": round(published - started, 3),
        "ingest_seconds": round(ingested - started, 3),
        "ingest_readings_per_s": round(len(received) / max(ingested - started, 1e-9), 1),
        "seconds": round(last - started, 3),
        "readings_per_s": round(len(readings) / (last - started), 1),
        "publish_to_scored_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "publish_to_scored_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "cpu_us_per_reading": {
            name: round((cpu_after[name] - cpu_before[name]) / len(readings) * 1e6)
            for name in cpu_before
            if math.isfinite(cpu_after[name] - cpu_before[name])  # not where /proc is not there
        },
    }


def pipeline_section(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline once per ``--samples-per-message`` value (a message per reading; devices' batches), each with
    fresh services, topics and sensors; the target is judged on each."""
    from edgeloop_common.telemetry.features import WINDOW_READINGS, DeviceWindows

    readings = simulated_readings(args.devices, args.readings)
    windows = DeviceWindows()
    expected = 0
    for device, values, event in readings:  # what the gateway will score: full windows, none across an event
        if event is not None:
            windows.forget("bench-site", device)
        elif windows.add("bench-site", device, values) is not None:
            expected += 1
    threshold = float(failure_model_metadata(args.model_base)["metrics"]["threshold"])
    runs: dict[str, Any] = {}
    with model_server(args.model_base, FAILURE_MODEL_NAME, args.server_threads) as (rest_url, grpc_target):
        for samples_per_message in args.samples_per_message:
            with services(rest_url, grpc_target, args.protocol, threshold) as deployed:
                figures = asyncio.run(
                    _pipeline(
                        deployed["prefix"], readings, expected, args.timeout_s, deployed["pids"], samples_per_message
                    )
                )
            figures["expected_scored"] = expected
            figures["protocol"] = args.protocol
            figures["window_readings"] = WINDOW_READINGS
            passed = figures["readings_per_s"] >= TARGET_READINGS_PER_S and figures["scored"] == expected
            figures["verdict"] = "PASS" if passed else "MISS"
            shape = "a message per reading" if samples_per_message == 1 else f"{samples_per_message} samples/message"
            print(
                f"pipeline (MQTT -> ingest -> Kafka -> gateway scoring -> Kafka; {args.devices} devices, {shape}, "
                f":predict over {args.protocol}): "
                f"{figures['readings']:,} readings, {figures['scored']:,}/{expected:,} scored in "
                f"{figures['seconds']} s = {figures['readings_per_s']:,.0f} readings/s (published in "
                f"{figures['publish_seconds']} s, all on "
                f"Kafka after {figures['ingest_seconds']} s: ingest {figures['ingest_readings_per_s']:,.0f}/s); "
                f"publish -> scored p50 {figures['publish_to_scored_p50_ms']} ms, p99 "
                f"{figures['publish_to_scored_p99_ms']} ms: {figures['verdict']} (target >= "
                f"{TARGET_READINGS_PER_S:,.0f}/s); CPU per reading: "
                + ", ".join(f"{name} {us} µs" for name, us in figures["cpu_us_per_reading"].items())
                + f" (load average {os.getloadavg()[0]:.2f})"
            )
            runs[f"samples_per_message_{samples_per_message}"] = figures
    return runs


def federated_section(args: argparse.Namespace) -> dict[str, Any]:
    """Federated vs centralised PR-AUC on the same held-out machines, and time per round with 3 sites
    (``bench/telemetry_federated.py``, which also runs alone with more options)."""
    from telemetry_federated import federated_figures  # a sibling; imports Flower only when asked

    return {strategy: federated_figures(strategy=strategy) for strategy in ("fedavg", "fedprox")}


# Sections by name.
SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "scoring": scoring_section,
    "pipeline": pipeline_section,
    "federated": federated_section,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="scoring,pipeline", help=f"comma separated: {', '.join(SECTIONS)}")
    parser.add_argument("--devices", type=int, default=200, help="simulated machines")
    parser.add_argument(
        "--readings", type=int, default=100_000, help="readings in all (the pipeline needs ~20 s to reach its pace)"
    )
    parser.add_argument("--rate", type=float, default=TARGET_READINGS_PER_S, help="scoring: the paced rate")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--server-threads", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=180.0, help="pipeline: longest wait for the scores")
    parser.add_argument(
        "--protocol", choices=("grpc", "rest"), default="grpc", help="pipeline: the gateway's :predict API"
    )
    parser.add_argument(
        "--samples-per-message",
        default="1,10",
        help="pipeline: comma separated; a run per value: 1 = a message per reading, N = each device's readings in "
        "batches of N samples per message",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    args.samples_per_message = [int(value) for value in args.samples_per_message.split(",") if value.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def main() -> None:
    args = parse_args()
    args.model_base = failure_model_base()
    metrics = failure_model_metadata(args.model_base)["metrics"]
    print(
        f"telemetry benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; failure model "
        f"{args.model_base} (PR-AUC {metrics['pr_auc']:.3f}, threshold {metrics['threshold']:.3f})"
    )
    figures = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    for name in args.sections:
        figures[name] = SECTIONS[name](args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
