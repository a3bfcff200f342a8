"""End-to-end latency: device publish -> result received, divided by a direct call to the model server.

One run measures both, on the same images, at the same fixed rate, against the same lite model
server (``edgeloop model-server`` in its own process, serving a really trained model):

* **end to end**: a simulated device (:class:`edgeloop.device.DeviceSimulator`) publishes each
  image over MQTT QoS 1 to ``dt/edgeloop/{site}/{device}/image``; ingest validates and stores it and
  announces ``ImageReceived``; the inference gateway fetches the blob, classifies it through the
  TF Serving API, publishes ``InferenceCompleted`` and sends the result to
  ``dt/edgeloop/{site}/{device}/result``. Latency: publish -> result received, per image.
* **direct**: the same images, one after another at the same rate, sent to the model server with the
  gateway's own TF Serving client (in ``edge`` mode the agent's, ``edgeloop_common.serving``; same protocol,
  REST or gRPC). Latency: call -> answer.

Both run in alternating rounds (``--rounds``), so the load of a shared machine falls on both alike.
Ratios: e2e p50 / direct p50 and e2e p99 / direct p99. Target (issue 3): p99 ratio <= 1.5 through the cloud
(``distributed``, ``standalone``); <= 1.3 at the edge (``edge``).

Modes:

* ``edge``: the edge path (docs/edge.md). An edge agent (``edgeloop-edge --site S``, its own process) takes the
  device's picture from Mosquitto, stores it durably (SQLite at the edge), classifies it through the node group's
  model server (here the same lite model server, the agent's TF Serving client) and answers on the result topic;
  no cloud involved (no ``cloud_url``, no uplink). Target (issue "Edge agent"): p99 ratio <= 1.3.
* ``distributed``: the real Kafka, Mosquitto and PostgreSQL (``edgeloop infra up``); ingest and the
  gateway run as their own processes (``edgeloop ingest``, ``edgeloop inference-gateway``), as deployed.
* ``standalone``: ingest and the gateway in one process around one ``InProcessBus`` with SQLite and
  local folders, as ``edgeloop demo`` wires them; the same Mosquitto.

Each device image is made unique (a JPEG comment with the run and index), as a camera's frames are,
so ingest stores a new blob and a new sample for every one. Everything a run creates (Kafka topics
under a fresh prefix, its MQTT session, its PostgreSQL rows, its data folder) is removed at the end.

    .venv/bin/python bench/e2e_latency.py                           # the cloud modes, 1,000 images at 20/s each
    .venv/bin/python bench/e2e_latency.py --mode all                # edge, distributed and standalone
    .venv/bin/python bench/e2e_latency.py --mode edge,distributed --count 400 --rounds 4
    .venv/bin/python bench/e2e_latency.py --mode distributed --rate 20 --count 1000
    .venv/bin/python bench/e2e_latency.py --mode standalone --protocol grpc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_batching import ensure_model, free_port, model_server  # a sibling benchmark

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET = REPO_ROOT.parent / "shared" / "datasets" / "catdog"
RUNS_DIR = REPO_ROOT / ".edgeloop" / "bench"
EDGELOOP = Path(sys.executable).parent / "edgeloop"
SITE = "bench-e2e"
DEVICE = "cam-1"
P99_TARGET = 1.5
EDGE_P99_TARGET = 1.3
MODES = ("edge", "distributed", "standalone")


# -- figures --------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the device simulator's definition)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


@dataclass
class Spread:
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls(math.nan, math.nan, math.nan, math.nan, 0)
        return cls(percentile(values, 50), percentile(values, 99), sum(values) / len(values), max(values), len(values))

    def describe(self) -> str:
        return (
            f"p50 {self.p50_ms:7.1f} ms  p99 {self.p99_ms:7.1f} ms  "
            f"mean {self.mean_ms:7.1f} ms  max {self.max_ms:7.1f} ms"
        )


@dataclass
class ModeResult:
    mode: str
    protocol: str
    rate_per_s: float
    images: int
    direct: Spread
    end_to_end: Spread
    p50_ratio: float
    p99_ratio: float
    stages: dict[str, Spread]
    service_means_ms: dict[str, float]
    missing_results: int
    foreign_results: int
    direct_errors: int
    load_average: tuple[float, float]
    target_p99_ratio: float = P99_TARGET
    service_log_problems: list[str] = field(default_factory=list)
    """Warnings and errors the services logged while measuring (a broker restarting under us, retries)."""
    per_image: list[dict[str, float]] = field(default_factory=list, repr=False)
    """Each end-to-end image in sending order: published (epoch s), e2e and stage times (ms)."""
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        passed = self.p99_ratio <= self.target_p99_ratio and not self.missing_results
        self.verdict = "PASS" if passed else "FAIL"


# -- images ---------------------------------------------------------------------------------------------------------


def image_pool(folders: list[Path]) -> list[bytes]:
    """The folders' JPEG/PNG photos (recursively, sorted), read once."""
    paths = [
        path
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix.lower() in {".jpg", ".jpeg", ".png"}
    ]
    if not paths:
        raise SystemExit(f"no JPEG or PNG photos in {', '.join(map(str, folders))}")
    return [path.read_bytes() for path in paths]


def unique_frame(image: bytes, tag: str) -> bytes:
    """``image`` with a JPEG comment segment carrying ``tag``: new bytes (a new blob), the same picture."""
    if image[:2] != b"\xff\xd8":
        return image  # PNG: sent as it is
    comment = tag.encode()
    return image[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + image[2:]


def frames(pool: list[bytes], count: int, run: str, unique: bool) -> list[bytes]:
    return [unique_frame(pool[i % len(pool)], f"{run}-{i}") if unique else pool[i % len(pool)] for i in range(count)]


def blocks(items: list[bytes], rounds: int) -> list[list[bytes]]:
    """``items`` in ``rounds`` consecutive blocks of near-equal size."""
    bounds = [len(items) * number // rounds for number in range(rounds + 1)]
    return [items[start:end] for start, end in itertools.pairwise(bounds) if end > start]


# -- the services ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    mode: str
    run: str
    run_dir: Path
    topic_prefix: str
    mqtt_client_id: str
    ingest_url: str
    gateway_url: str
    env: dict[str, str]
    edge_url: str = ""


def deployment(mode: str, args: argparse.Namespace, rest_url: str, grpc_target: str) -> Deployment:
    run = f"e2e-{mode[:4]}-{uuid.uuid4().hex[:8]}"
    run_dir = RUNS_DIR / run
    ingest_port, gateway_port, edge_port = free_port(), free_port(), free_port()
    prefix, client_id = f"bench-{run}.", f"edgeloop-bench-{run}"
    env = {
        **os.environ,
        "EDGELOOP_MODE": "standalone" if mode == "edge" else mode,  # the agent has no bus: either does
        "EDGELOOP_DATA_DIR": str(run_dir / "data"),
        "EDGELOOP_LOG_LEVEL": "WARNING",
        "EDGELOOP_INGEST_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_INGEST_HTTP_PORT": str(ingest_port),
        "EDGELOOP_INGEST_MQTT_CLIENT_ID": client_id,
        "EDGELOOP_INGEST_MQTT_SESSION_EXPIRY_S": "120",  # ended explicitly too; a crash leaves it 2 minutes at most
        "EDGELOOP_TOPIC_PREFIX": prefix,
        "EDGELOOP_INFERENCE_GATEWAY_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_INFERENCE_GATEWAY_HTTP_PORT": str(gateway_port),
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_NAME": args.model_name_resolved,
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_PROTOCOL": args.protocol,
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL": rest_url,
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_GRPC_TARGET": grpc_target,
        "EDGELOOP_EDGE_MODEL_NAME": args.model_name_resolved,
        "EDGELOOP_EDGE_MODEL_SERVER_PROTOCOL": args.protocol,
        "EDGELOOP_EDGE_MODEL_SERVER_URL": rest_url,
        "EDGELOOP_EDGE_MODEL_SERVER_GRPC_TARGET": grpc_target,
        "EDGELOOP_EDGE_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_EDGE_HTTP_PORT": str(edge_port),
        "EDGELOOP_EDGE_MQTT_CLIENT_ID": client_id,
        "EDGELOOP_EDGE_MQTT_SESSION_EXPIRY_S": "120",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    for setting in args.set or []:
        name, _, value = setting.partition("=")
        env[name] = value
    return Deployment(
        mode=mode,
        run=run,
        run_dir=run_dir,
        topic_prefix=prefix,
        mqtt_client_id=client_id,
        ingest_url=f"http://127.0.0.1:{ingest_port}",
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        env=env,
        edge_url=f"http://127.0.0.1:{edge_port}",
    )


@contextlib.contextmanager
def service_process(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> Iterator[subprocess.Popen]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_services(dep: Deployment) -> Iterator[list[subprocess.Popen]]:
    """Distributed: ``edgeloop ingest`` and ``edgeloop inference-gateway``; standalone: both in one process;
    edge: ``edgeloop-edge --site S`` (no cloud)."""
    logs = dep.run_dir / "logs"
    with contextlib.ExitStack() as stack:
        if dep.mode == "edge":
            command = [str(EDGELOOP.parent / "edgeloop-edge"), "--site", site_of(dep)]
            processes = [stack.enter_context(service_process("edge", command, dep.env, logs))]
        elif dep.mode == "distributed":
            processes = [
                stack.enter_context(service_process("ingest", [str(EDGELOOP), "ingest"], dep.env, logs)),
                stack.enter_context(
                    service_process("inference-gateway", [str(EDGELOOP), "inference-gateway"], dep.env, logs)
                ),
            ]
        else:
            command = [sys.executable, str(Path(__file__).resolve()), "--serve-standalone"]
            processes = [stack.enter_context(service_process("standalone", command, dep.env, logs))]
        wait_ready(dep, processes)
        yield processes


def wait_ready(dep: Deployment, processes: list[subprocess.Popen], timeout_s: float = 180.0) -> None:
    urls = [dep.edge_url] if dep.mode == "edge" else [dep.ingest_url, dep.gateway_url]
    for url in urls:
        wait_http_ready(url, processes, timeout_s, dep.run_dir / "logs")


def wait_http_ready(
    url: str, processes: list[subprocess.Popen], timeout_s: float = 180.0, logs: Path | None = None
) -> None:
    """Until ``url``/readyz answers 200; SystemExit when a process exits first or the time is up."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        for process in processes:
            if process.poll() is not None:
                raise SystemExit(f"a service exited with {process.returncode}; see {logs or 'its log'}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=3)
            if response.status_code == 200:
                return
            last = response.text[:300]
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready within {timeout_s:.0f}s: {last}")
        time.sleep(0.5)


@dataclass(frozen=True)
class EdgeAgentProcess:
    site: str
    url: str
    client_id: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def edge_agent(
    site: str, folder: Path, settings: dict[str, str], *, ready_timeout_s: float = 120.0
) -> Iterator[EdgeAgentProcess]:
    """``edgeloop-edge --site SITE`` in its own process, data and log under ``folder``; ``settings``: its
    ``EDGELOOP_EDGE_*`` (model server, cloud, uplink, miner). Yields once ``/readyz`` answers (site broker and
    model server reachable); stops it (SIGTERM) on the way out. Its MQTT session is left to the caller
    (:func:`end_session`), since a test of its persistence may want it kept."""
    port = free_port()
    client_id = f"edgeloop-bench-edge-{site}"
    env = {
        **os.environ,
        "EDGELOOP_DATA_DIR": str(folder / "data"),
        "EDGELOOP_LOG_LEVEL": "WARNING",
        "EDGELOOP_EDGE_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_EDGE_HTTP_PORT": str(port),
        "EDGELOOP_EDGE_MQTT_CLIENT_ID": client_id,
        "EDGELOOP_EDGE_MQTT_SESSION_EXPIRY_S": "120",  # ended explicitly too; a crash leaves it 2 minutes at most
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    command = [str(Path(sys.executable).parent / "edgeloop-edge"), "--site", site]
    logs = folder / "logs"
    with service_process(f"edge-{site}", command, env, logs) as process:
        url = f"http://127.0.0.1:{port}"
        wait_http_ready(url, [process], ready_timeout_s, logs)
        yield EdgeAgentProcess(site, url, client_id, process, logs / f"edge-{site}.log")


def cleanup(dep: Deployment, keep: bool) -> None:
    """Remove what the run created on the shared brokers and database, and its data folder."""
    steps: list[tuple[str, Callable[[Deployment], None]]] = [("MQTT session", end_mqtt_session)]
    if dep.mode == "distributed":
        steps += [("Kafka topics", delete_run_topics), ("PostgreSQL rows", delete_sample_rows)]
    for what, step in steps:
        try:
            step(dep)
        except Exception as exc:  # noqa: BLE001 - reported; the other clean-ups still run
            print(f"  note: could not remove the run's {what}: {exc!r}", file=sys.stderr)
    if not keep:
        shutil.rmtree(dep.run_dir, ignore_errors=True)


def end_mqtt_session(dep: Deployment) -> None:
    """Connect once with ingest's client id and a clean start, so the broker drops its persistent session."""
    end_session(dep.mqtt_client_id, dep.env)


def end_session(client_id: str, env: dict[str, str] | None = None) -> None:
    """Connect once as ``client_id`` with a clean start and no expiry: the broker drops that persistent session."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    env = os.environ if env is None else env
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    host = env.get("EDGELOOP_MQTT_HOST", "127.0.0.1")
    port = int(env.get("EDGELOOP_MQTT_PORT", "1883"))
    client.connect(host, port, clean_start=True, properties=properties)
    client.loop(timeout=2.0)
    client.disconnect()


def delete_run_topics(dep: Deployment) -> None:
    asyncio.run(delete_topics(dep.env.get("EDGELOOP_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), dep.topic_prefix))


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


def delete_sample_rows(dep: Deployment) -> None:
    from edgeloop_common.settings import CommonSettings
    from sqlalchemy import create_engine, text

    engine = create_engine(CommonSettings().database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM ingest_samples WHERE site_id = :site"), {"site": site_of(dep)})
    finally:
        engine.dispose()


def site_of(dep: Deployment) -> str:
    return f"{SITE}-{dep.run[-8:]}"


# -- measuring ------------------------------------------------------------------------------------------------------


async def direct_block(client: Any, route: Any, images: list[bytes], rate: float) -> tuple[list[float], int]:
    """Each image sent alone to the model server, one after another, starting every 1/rate s."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    start = loop.time()
    for index, image in enumerate(images):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        began = time.perf_counter()
        try:
            await client.classify(route, [image])
        except Exception as exc:  # noqa: BLE001 - counted and reported, the benchmark goes on
            errors += 1
            print(f"  direct call failed: {exc}", file=sys.stderr)
            continue
        latencies.append((time.perf_counter() - began) * 1000.0)
    return latencies, errors


STAGES = {
    "to_ingest": "publish -> ingest has the message (device, Mosquitto)",
    "ingest_to_gateway": "ingest has it -> gateway handler starts (store, bus hop)",
    "gateway": "gateway handler -> scores (fetch, checks, batcher, model call)",
    "after_gateway": "scores -> device has the result (InferenceCompleted, MQTT)",
}


EDGE_STAGES = {
    "to_edge": "publish -> agent starts classifying (Mosquitto, JPEG check, SQLite commit, PUBACK)",
    "edge": "agent: model call, mining, answer assembled (latency_ms)",
    "after_edge": "answer -> device has the result (MQTT)",
}


@dataclass
class DeviceBlock:
    latencies_ms: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    per_image: list[dict[str, float]] = field(default_factory=list)
    missing: int = 0
    foreign: int = 0

    def add(self, other: DeviceBlock) -> None:
        self.latencies_ms.extend(other.latencies_ms)
        for stage, values in other.stages.items():
            self.stages.setdefault(stage, []).extend(values)
        self.per_image.extend(other.per_image)
        self.missing += other.missing
        self.foreign += other.foreign


@dataclass(frozen=True)
class _Timeline:
    """One result's wall-clock moments (seconds) and the gateway's own time (ms)."""

    sample_id: str
    published: float
    completed: float
    arrived: float
    gateway_ms: float


async def device_block(
    dep: Deployment, images: list[bytes], rate: float, folder: Path, model_name: str, timeout_s: float
) -> DeviceBlock:
    """The images published by a simulated device at ``rate``; publish -> result latency and where it went."""
    from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig

    await asyncio.to_thread(write_images, folder, images)
    block = DeviceBlock()
    timelines: list[_Timeline] = []

    def on_result(result: DeviceResult) -> None:
        arrived = time.time()
        payload = result.payload
        if payload.get("model_name") != model_name:
            block.foreign += 1  # another pipeline on the shared broker answered our image
            return
        block.latencies_ms.append(result.latency_ms)
        timelines.append(
            _Timeline(
                sample_id=payload["sample_id"],
                published=arrived - result.latency_ms / 1000.0,
                completed=datetime.fromisoformat(payload["completed_at"]).timestamp(),
                arrived=arrived,
                gateway_ms=float(payload["latency_ms"]),
            )
        )

    simulator = DeviceSimulator(
        SimulatorConfig(
            images_dir=folder,
            site=site_of(dep),
            device=DEVICE,
            rate=rate,
            mqtt_host=dep.env.get("EDGELOOP_MQTT_HOST", "127.0.0.1"),
            mqtt_port=int(dep.env.get("EDGELOOP_MQTT_PORT", "1883")),
            timeout_s=timeout_s,
        ),
        on_result=on_result,
    )
    summary = await simulator.run()
    block.missing = summary.missing
    await asyncio.to_thread(shutil.rmtree, folder, True)
    if dep.mode == "edge":
        # The agent's latency_ms runs from the picture accepted (stored, acknowledged) to the answer assembled.
        for timeline in timelines:
            started = timeline.completed - timeline.gateway_ms / 1000.0
            times = {
                "to_edge": (started - timeline.published) * 1000.0,
                "edge": timeline.gateway_ms,
                "after_edge": (timeline.arrived - timeline.completed) * 1000.0,
            }
            for stage, value in times.items():
                block.stages.setdefault(stage, []).append(value)
            image = {"published": timeline.published, "e2e": (timeline.arrived - timeline.published) * 1000.0}
            block.per_image.append(image | {stage: round(value, 2) for stage, value in times.items()})
        return block
    block.stages = {stage: [] for stage in STAGES}
    # After the block, not during it: when ingest had each message (its sample's received_at).
    received = await received_times(dep.ingest_url, [timeline.sample_id for timeline in timelines])
    for timeline in timelines:
        handler_started = timeline.completed - timeline.gateway_ms / 1000.0
        block.stages["to_ingest"].append((received[timeline.sample_id] - timeline.published) * 1000.0)
        block.stages["ingest_to_gateway"].append((handler_started - received[timeline.sample_id]) * 1000.0)
        block.stages["gateway"].append(timeline.gateway_ms)
        block.stages["after_gateway"].append((timeline.arrived - timeline.completed) * 1000.0)
        image = {"published": timeline.published, "e2e": (timeline.arrived - timeline.published) * 1000.0}
        block.per_image.append(image | {stage: round(values[-1], 2) for stage, values in block.stages.items()})
    return block


async def received_times(ingest_url: str, sample_ids: list[str]) -> dict[str, float]:
    """``received_at`` of each sample, from ingest's HTTP API."""
    async with httpx.AsyncClient(base_url=ingest_url, timeout=10) as http:

        async def one(sample_id: str) -> tuple[str, float]:
            response = await http.get(f"/v1/samples/{sample_id}")
            response.raise_for_status()
            received = datetime.fromisoformat(response.json()["received_at"])
            return sample_id, received.replace(tzinfo=received.tzinfo or UTC).timestamp()  # SQLite drops the zone

        answers: list[tuple[str, float]] = []
        for start in range(0, len(sample_ids), 20):
            answers += await asyncio.gather(*(one(sample_id) for sample_id in sample_ids[start : start + 20]))
    return dict(answers)


def write_images(folder: Path, images: list[bytes]) -> None:
    """The device's folder: the block's images, in sending order by name."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        (folder / f"{index:05d}.jpg").write_bytes(image)


async def scrape(url: str) -> dict[str, float]:
    """The ``_sum`` and ``_count`` of every histogram a service exposes on /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{url}/metrics")).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")) and not sample.labels:
                values[sample.name] = sample.value
    return values


SERVICE_HISTOGRAMS = {
    "ingest: validate+store+record one batch": ("ingest", "edgeloop_ingest_prepare_duration_seconds"),
    "ingest: bus enqueue -> ack": ("ingest", "edgeloop_ingest_publish_duration_seconds"),
    "gateway: fetch+checks+batch+model": ("gateway", "edgeloop_inference_duration_seconds"),
    "gateway: model server call": ("gateway", "edgeloop_model_call_duration_seconds"),
}


def histogram_means(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    means: dict[str, float] = {}
    for label, (service, metric) in SERVICE_HISTOGRAMS.items():
        total = after[service].get(f"{metric}_sum", 0.0) - before[service].get(f"{metric}_sum", 0.0)
        count = after[service].get(f"{metric}_count", 0.0) - before[service].get(f"{metric}_count", 0.0)
        if count:
            means[label] = round(total / count * 1000.0, 2)
    return means


async def measure(dep: Deployment, args: argparse.Namespace, rest_url: str, grpc_target: str) -> ModeResult:
    from edgeloop_common.serving import ModelRoute
    from edgeloop_inference_gateway.app import model_client_from_settings
    from edgeloop_inference_gateway.settings import Settings

    if dep.mode == "edge":  # the agent's own client (edgeloop_edge.app builds the same)
        from edgeloop_common.serving import create_model_client
        from edgeloop_edge.settings import Settings as EdgeSettings

        edge = EdgeSettings(site=SITE)
        client = create_model_client(
            args.protocol,
            rest_url=rest_url,
            grpc_target=grpc_target,
            timeout_s=edge.model_timeout_s,
            metadata_ttl_s=edge.metadata_refresh_s,
        )
    else:
        client = model_client_from_settings(
            Settings(
                model_server_protocol=args.protocol,
                model_server_rest_url=rest_url,
                model_server_grpc_target=grpc_target,
                model_name=args.model_name_resolved,
            )
        )
    route = ModelRoute.of(args.model_name_resolved, "")
    pool = image_pool(args.images)
    warm = frames(pool, args.warmup, f"{dep.run}-warm", args.unique)
    images = frames(pool, args.count, dep.run, args.unique)
    folder = dep.run_dir / "device"
    load_before = os.getloadavg()[0]
    try:
        await direct_block(client, route, warm, args.rate)
        await device_block(dep, warm, args.rate, folder, args.model_name_resolved, args.timeout)
        direct: list[float] = []
        device = DeviceBlock()
        direct_errors = 0
        services = {} if dep.mode == "edge" else {"ingest": dep.ingest_url, "gateway": dep.gateway_url}
        before = {name: await scrape(url) for name, url in services.items()}
        for number, block in enumerate(blocks(images, args.rounds)):
            order = ("direct", "device") if number % 2 == 0 else ("device", "direct")
            for path in order:
                if path == "direct":
                    latencies, errors = await direct_block(client, route, block, args.rate)
                    direct.extend(latencies)
                    direct_errors += errors
                else:
                    measured = await device_block(dep, block, args.rate, folder, args.model_name_resolved, args.timeout)
                    device.add(measured)
            print(
                f"  round {number + 1}/{args.rounds}: {len(block)} images each way; so far direct "
                f"p99 {percentile(direct, 99):.1f} ms, end to end p99 {percentile(device.latencies_ms, 99):.1f} ms"
            )
        after = {name: await scrape(url) for name, url in services.items()}
    finally:
        await client.close()
    direct_spread, e2e_spread = Spread.of(direct), Spread.of(device.latencies_ms)
    return ModeResult(
        mode=dep.mode,
        protocol=args.protocol,
        rate_per_s=args.rate,
        images=args.count,
        direct=direct_spread,
        end_to_end=e2e_spread,
        p50_ratio=round(e2e_spread.p50_ms / direct_spread.p50_ms, 2),
        p99_ratio=round(e2e_spread.p99_ms / direct_spread.p99_ms, 2),
        stages={stage: Spread.of(values) for stage, values in device.stages.items()},
        service_means_ms=histogram_means(before, after) if services else {},
        missing_results=device.missing,
        foreign_results=device.foreign,
        direct_errors=direct_errors,
        load_average=(round(load_before, 2), round(os.getloadavg()[0], 2)),
        per_image=sorted(device.per_image, key=lambda image: image["published"]),
        target_p99_ratio=EDGE_P99_TARGET if dep.mode == "edge" else P99_TARGET,
    )


def report(result: ModeResult) -> None:
    print(f"\n{result.mode}: {result.images} images at {result.rate_per_s:g}/s, {result.protocol.upper()}, "
          f"load average {result.load_average[0]} -> {result.load_average[1]} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"  direct model server call   {result.direct.describe()}  ({result.direct.count} calls)")
    print(f"  device publish -> result   {result.end_to_end.describe()}  ({result.end_to_end.count} results)")
    print(f"  ratio end to end / direct  p50 {result.p50_ratio:.2f}  p99 {result.p99_ratio:.2f}  "
          f"(target p99 <= {result.target_p99_ratio}) {result.verdict}")  # fmt: skip
    print("  where the end-to-end time goes (per image, from the result's completed_at and latency_ms):")
    for stage, spread in result.stages.items():
        print(f"    {(STAGES | EDGE_STAGES)[stage]:<62} {spread.describe()}")
    if result.service_means_ms:
        means = ", ".join(f"{label} {value:.1f} ms" for label, value in result.service_means_ms.items())
        print(f"  service histograms (means): {means}")
    if result.missing_results or result.foreign_results or result.direct_errors:
        print(f"  WARNING: {result.missing_results} results missing, {result.foreign_results} results from another "
              f"pipeline on the shared broker, {result.direct_errors} direct calls failed")  # fmt: skip
    if result.service_log_problems:
        print(f"  WARNING: the services logged {len(result.service_log_problems)} warning(s)/error(s) while measuring "
              "(the figures may not describe a healthy pipeline), e.g.:")  # fmt: skip
        for line in result.service_log_problems[:3]:
            print(f"    {line[:200]}")


async def run_mode(mode: str, args: argparse.Namespace, rest_url: str, grpc_target: str) -> ModeResult:
    dep = deployment(mode, args, rest_url, grpc_target)
    print(f"\n== {mode}: starting services (run {dep.run}, logs in {dep.run_dir / 'logs'}) ...")
    try:
        with running_services(dep):
            print(f"== {mode}: measuring {args.count} images at {args.rate:g}/s in {args.rounds} alternating rounds")
            logs = LogWatch(dep.run_dir / "logs")
            result = await measure(dep, args, rest_url, grpc_target)
            result.service_log_problems = logs.problems()
            return result
    finally:
        await asyncio.to_thread(cleanup, dep, args.keep)


class LogWatch:
    """What the services' log files gained since it was made: their warnings and errors."""

    def __init__(self, folder: Path) -> None:
        self.offsets = {path: path.stat().st_size for path in folder.glob("*.log")}

    def problems(self) -> list[str]:
        found: list[str] = []
        for path, offset in self.offsets.items():
            with path.open("rb") as log_file:
                log_file.seek(offset)
                lines = log_file.read().decode(errors="replace").splitlines()
            found += [f"{path.stem}: {line}" for line in lines if " WARNING " in line or " ERROR " in line]
        return found


# -- standalone: ingest + gateway around one in-process bus (a child process of the benchmark) ------------------------


@contextlib.asynccontextmanager
async def standalone_services() -> AsyncIterator[None]:
    """Ingest and gateway wired by :class:`edgeloop.system.System` (as the demo is); the rest from the environment."""
    from edgeloop.system import System, SystemConfig
    from edgeloop_common.bus.inprocess import InProcessBus
    from edgeloop_inference_gateway.settings import Settings as GatewaySettings
    from edgeloop_ingest.settings import Settings as IngestSettings

    bus = InProcessBus(source="edgeloop-bench")
    # The parent chose the ports and the model server's URLs and passed them (and --set) in the environment.
    ports = {"ingest": IngestSettings().http_port, "inference-gateway": GatewaySettings().http_port}
    system = System(SystemConfig(bus=bus, ports=ports))
    await bus.start()
    try:
        await system.start(("ingest", "inference-gateway"))
        yield
    finally:
        await system.stop()
        await bus.stop()


async def serve_standalone() -> None:
    from edgeloop_common.service_runner import freeze_what_is_loaded

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with standalone_services():
        freeze_what_is_loaded()  # as `edgeloop demo` does once its services are up
        await stop.wait()


# -- main -----------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mode",
        default="both",
        help="edge, distributed, standalone, comma-separated; both: distributed,standalone; all: the three",
    )
    parser.add_argument("--count", type=int, default=1000, help="Images through each path (end to end, direct)")
    parser.add_argument("--rate", type=float, default=20.0, help="Images per second the device sends")
    parser.add_argument("--rounds", type=int, default=4, help="Alternating direct / end-to-end rounds")
    parser.add_argument("--warmup", type=int, default=20, help="Images through each path first, not counted")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest", help="Gateway -> model server")
    parser.add_argument("--model-base", type=Path, help="Model base path (default: train one into .edgeloop/bench)")
    parser.add_argument("--model", help="Model name under --model-base")
    parser.add_argument("--train-epochs", type=int, default=1, help="Epochs when training the benchmark model")
    parser.add_argument("--server-threads", type=int, default=4, help="Model server inference threads")
    parser.add_argument(
        "--images", type=Path, action="append", help="Photo folder (repeatable; default: the captures and train photos)"
    )
    parser.add_argument("--same-bytes", dest="unique", action="store_false", help="Do not make each frame unique")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait for late results per round")
    parser.add_argument("--set", action="append", help="Extra environment for the services, NAME=VALUE (repeatable)")
    parser.add_argument("--json", type=Path, help="Also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="Keep the run's data folder and logs")
    parser.add_argument("--serve-standalone", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.images = args.images or [DATASET / "captures", DATASET / "train"]
    aliases = {"both": ["distributed", "standalone"], "all": list(MODES)}
    args.modes = [mode for name in args.mode.split(",") for mode in aliases.get(name.strip(), [name.strip()])]
    if unknown := [mode for mode in args.modes if mode not in MODES]:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}, both, all")
    return args


async def broker_store(host: str, port: int, timeout_s: float = 12.0) -> tuple[int, int] | None:
    """Messages and bytes Mosquitto holds (``$SYS``, published every 10 s); None if it does not say in time.

    Each autosave rewrites all of them while the (single-threaded) broker stalls every client: hundreds of MB
    of QoS 1 messages queued for an offline persistent session mean a half-second stall a minute."""
    from edgeloop_common.mqtt_asyncio import AsyncMqttClient

    figures: dict[str, int] = {}
    have_both = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        figures[topic.rsplit("/", 1)[-1]] = int(payload)
        if len(figures) == 2:
            have_both.set()

    client = AsyncMqttClient(host, port, on_message=on_message)
    await client.connect()
    try:
        await client.subscribe("$SYS/broker/store/messages/+", qos=0)
        async with asyncio.timeout(timeout_s):
            await have_both.wait()
    except TimeoutError:
        return None
    finally:
        await client.close()
    return figures.get("count", 0), figures.get("bytes", 0)


def source_version() -> str:
    """The commit the figures were measured on, ``+changes`` when the working tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown (no git)"
    return commit.stdout.strip() + ("+changes" if status.stdout.strip() else "")


def main() -> None:
    args = parse_args()
    if args.serve_standalone:
        asyncio.run(serve_standalone())
        return
    from edgeloop_common.settings import CommonSettings

    model_base, model_name = ensure_model(args.model_base, args.model, args.train_epochs)
    args.model_name_resolved = model_name
    modes = args.modes
    print(f"end-to-end latency benchmark: model {model_name} from {model_base}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; modes {', '.join(modes)}")  # fmt: skip
    common = CommonSettings()
    store = asyncio.run(broker_store(common.mqtt_host, common.mqtt_port))
    if store is not None:
        print(f"mosquitto holds {store[0]} messages, {store[1] / 2**20:.0f} MiB", end="")
        print(
            " (its autosave stalls every client while it writes them: expect p99 outliers)" if store[1] > 2**25 else ""
        )
    results: list[ModeResult] = []
    with model_server(model_base, model_name, args.server_threads) as (rest_url, grpc_target):
        for mode in modes:
            results.append(asyncio.run(run_mode(mode, args, rest_url, grpc_target)))
            report(results[-1])
    document = {
        "code": source_version(),
        "cpus": os.cpu_count(),
        "mosquitto_store": {"messages": store[0], "bytes": store[1]} if store else None,
        "modes": [asdict(result) for result in results],
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2))
    print(
        json.dumps(
            {r.mode: {"p50_ratio": r.p50_ratio, "p99_ratio": r.p99_ratio, "verdict": r.verdict} for r in results}
        )
    )
    sys.exit(0 if all(result.verdict == "PASS" for result in results) else 1)


if __name__ == "__main__":
    main()
