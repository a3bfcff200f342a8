"""The chaos harness: EdgeLoop's distributed path on brokers of its own, faults injected while a device publishes.

Used by ``tests/chaos`` (bounded: a few hundred images a fault) and ``bench/chaos.py`` (full size).

* :class:`Brokers` — a Kafka, a Mosquitto and a PostgreSQL of the harness's own, the same
  :mod:`edgeloop.infra` components ``edgeloop infra up`` starts, on free ports and in a state dir of their own,
  so they can be stopped and restarted without touching the shared ones (9092, 1883, 5432).
* :class:`Pipeline` — every service as its own OS process (``edgeloop <service>``, configured only through its
  ``EDGELOOP_*`` variables, as deployed): model server, registry, ingest, inference gateway, drift, trainer,
  deployer (local target). Each has its own PostgreSQL schema. A service can be SIGKILLed and started again
  with the same settings (same MQTT client id: ingest's persistent session is taken over), or paused (SIGSTOP).
* :func:`run_scenario` — a device publishes N unique JPEGs at QoS 1 to a site of the scenario's own while a fault
  runs; a labeler labels every ``label_every``-th answered sample over HTTP; then the harness waits for
  quiescence and counts from the real stores: acknowledged publishes (the device's PUBACKs), ingest's sample
  rows, every Kafka topic read to its end (by event id), the device results seen by a persistent MQTT
  observer, ingest's stored predictions and labels, the trainer's label count, consumer group lags.

The identity of an effect is the picture (its SHA-256: every frame is unique): an inference effect is an
``InferenceCompleted`` *event id* for it (the same id twice is a duplicate record the consumers skip; two ids
are two effects), a prediction a stored prediction of its sample, a result a device result for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from edgeloop import processes
from edgeloop.infra.component import Component
from edgeloop.infra.kafka import Kafka
from edgeloop.infra.mosquitto import Mosquitto
from edgeloop.infra.postgres import DATABASE, PASSWORD, ROLE, Postgres
from edgeloop_common import topics
from edgeloop_common.mqtt_asyncio import AsyncMqttClient

log = logging.getLogger("chaos")

REPO_ROOT = Path(__file__).resolve().parents[2]
EDGELOOP = Path(sys.executable).parent / "edgeloop"
MODEL_NAME = "catdog"
DEVICE = "cam-1"
# Every consumer group of the services started here (docs/errors-and-subscriptions.md).
CONSUMER_GROUPS: dict[str, tuple[str, ...]] = {
    "ingest-predictions": (topics.INFERENCES_COMPLETED,),
    "ingest-dead-letters": (topics.DEAD_LETTER,),
    "inference-gateway": (topics.IMAGES_RECEIVED,),
    "drift": (topics.INFERENCES_COMPLETED, topics.SAMPLES_LABELED),
    "trainer": (topics.TRAINING_REQUESTED,),
    "trainer-labels": (topics.SAMPLES_LABELED,),
    "deployer": (topics.MODELS_PROMOTED,),
    "deployer-canary": (topics.INFERENCES_COMPLETED,),
}
# The consumers a kill scenario SIGKILLs: every service that consumes Kafka (trainer: its label follower).
CONSUMERS = ("ingest", "inference-gateway", "drift", "trainer", "deployer")
SERVICE_ORDER = ("model-server", "registry", "ingest", "inference-gateway", "drift", "trainer", "deployer")
KAFKA_SESSION_TIMEOUT_S = 10.0  # the bus's session_timeout_ms


def _echo(line: str) -> None:
    log.info("%s", line)


# -- brokers of our own -----------------------------------------------------------------------------------------


def _on_ports(server: Component, **ports: int) -> Component:
    """The component moved to other ports: set on the instance after it read its defaults (and any
    ``EDGELOOP_INFRA_<NAME>_PORT``), so that only this harness's servers move."""
    for name, port in ports.items():
        setattr(server, name, port)
    return server


class Brokers:
    """Kafka, Mosquitto and PostgreSQL of the harness, from ``edgeloop.infra``'s components, under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        taken: set[int] = set()

        def free() -> int:
            port = processes.pick_port(0, taken)
            taken.add(port)
            return port

        self.kafka = _on_ports(Kafka(state_dir, REPO_ROOT), port=free(), controller_port=free())
        self.mosquitto = _on_ports(Mosquitto(state_dir, REPO_ROOT), port=free())
        self.postgres = _on_ports(Postgres(state_dir, REPO_ROOT), port=free())

    @property
    def components(self) -> dict[str, Component]:
        return {"kafka": self.kafka, "mosquitto": self.mosquitto, "postgres": self.postgres}

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.address

    def database_url(self, schema: str | None = None) -> str:
        url = f"postgresql+psycopg://{ROLE}:{PASSWORD}@127.0.0.1:{self.postgres.port}/{DATABASE}"
        return f"{url}?options={quote(f'-csearch_path={schema}')}" if schema else url

    def start(self) -> None:
        """Boot the three side by side (Kafka takes longest), as ``infra up`` does."""
        launches = [(server, server.launch(_echo)) for server in self.components.values()]
        for server, launch in reversed(launches):
            server.finish(launch, _echo)

    def stop(self) -> None:
        for server in reversed(list(self.components.values())):
            with contextlib.suppress(Exception):
                server.stop(_echo)

    def create_schemas(self, names: list[str]) -> None:
        import psycopg

        with psycopg.connect(self.database_url().replace("+psycopg", ""), autocommit=True) as connection:
            for name in names:
                connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{name}"')


# -- the services as processes --------------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]
    url: str
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        command = [str(EDGELOOP), self.name]
        with self.log_file.open("ab") as log_file:
            log_file.write(f"\n=== chaos: start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused process must run to stop
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def ready(self) -> bool:
        try:
            path = f"/v1/models/{MODEL_NAME}" if self.name == "model-server" else "/readyz"
            return httpx.get(f"{self.url}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_file}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout_s:.0f}s; see {self.log_file}")
            time.sleep(0.3)


class Pipeline:
    """The distributed path's services as processes, on the harness's brokers."""

    def __init__(self, brokers: Brokers, work_dir: Path, model_base: Path, *, log_level: str = "WARNING") -> None:
        self.brokers = brokers
        self.work_dir = work_dir
        self.model_base = model_base
        self.run_id = uuid.uuid4().hex[:8]
        self._versions = 1  # version 1 is the one the model server starts with
        self.schemas = {name: f"chaos_{name.replace('-', '_')}" for name in SERVICE_ORDER if name != "model-server"}
        ports = {name: processes.pick_port(0) for name in SERVICE_ORDER}
        grpc_port = processes.pick_port(0, set(ports.values()))
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        (work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.services: dict[str, ServiceProcess] = {}
        for name in SERVICE_ORDER:
            prefix = f"EDGELOOP_{name.upper().replace('-', '_')}_"
            env = {
                **os.environ,
                "EDGELOOP_MODE": "distributed",
                "EDGELOOP_KAFKA_BOOTSTRAP_SERVERS": brokers.kafka_bootstrap,
                "EDGELOOP_MQTT_HOST": "127.0.0.1",
                "EDGELOOP_MQTT_PORT": str(brokers.mosquitto.port),
                "EDGELOOP_DATABASE_URL": brokers.database_url(self.schemas.get(name)),
                "EDGELOOP_DATA_DIR": str(work_dir / "data" / name),
                "EDGELOOP_LOG_LEVEL": log_level,
                "EDGELOOP_TOPIC_PREFIX": "",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONUNBUFFERED": "1",
                f"{prefix}HTTP_HOST": "127.0.0.1",
                f"{prefix}HTTP_PORT": str(ports[name]),
            }
            env |= self._settings(name, prefix, grpc_port)
            self.services[name] = ServiceProcess(name, env, self.urls[name], work_dir / "logs" / f"{name}.log")

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` lines of each service's log (WARNING and above, and each start the harness made)."""
        tails = []
        for name, service in self.services.items():
            said = service.log_file.read_text(errors="replace").splitlines() if service.log_file.exists() else []
            tails.append(f"--- {name} ({service.log_file.name}, last {min(lines, len(said))} lines)")
            tails.extend(said[-lines:])
        return "\n".join(tails)

    def _settings(self, name: str, prefix: str, grpc_port: int) -> dict[str, str]:
        values: dict[str, str] = {}
        if name == "model-server":
            values = {
                "MODEL_NAME": MODEL_NAME,
                "MODEL_BASE_PATH": str(self.model_base),
                "GRPC_HOST": "127.0.0.1",
                "GRPC_PORT": str(grpc_port),
                "INFERENCE_THREADS": "2",
                "MODEL_VERSION_POLICY": "all",
                "POLL_INTERVAL_S": "0.5",
            }
        elif name == "ingest":
            # One fixed client id: a restarted ingest takes over its persistent session and gets what it had not
            # acknowledged.
            values = {"MQTT_CLIENT_ID": f"chaos-ingest-{self.run_id}", "MQTT_SESSION_EXPIRY_S": "3600"}
        elif name == "inference-gateway":
            values = {"MODEL_NAME": MODEL_NAME, "MODEL_SERVER_REST_URL": self.urls["model-server"]}
        elif name == "drift":
            values = {"REGISTRY_URL": self.urls["registry"], "REQUEST_TRAINING": "false", "REFERENCE_RETRY_S": "5"}
        elif name == "trainer":
            # The follower counts labels; no training is asked for within a run (it would take the CPU).
            values = {
                "REGISTRY_URL": self.urls["registry"],
                "INGEST_URL": self.urls["ingest"],
                "MODELS": MODEL_NAME,
                "RETRAIN_EVERY_LABELS": "1000000",
                "MODEL_BASE": str(self.model_base),
            }
        elif name == "deployer":
            values = {
                "TARGET": "local",
                "NODE_GROUPS": "chaos-group",
                "MODEL_SERVER_URL": self.urls["model-server"],
                "LOCAL_MODEL_BASE": str(self.model_base),
                "ROLLOUT_TIMEOUT_S": "60",
                "POLL_INTERVAL_S": "0.25",
            }
        elif name == "registry":
            values = {"OUTBOX_POLL_INTERVAL_S": "0.2"}
        return {f"{prefix}{key}": value for key, value in values.items()}

    def start(self) -> None:
        self.brokers.create_schemas(list(self.schemas.values()))
        for name in SERVICE_ORDER:
            self.services[name].start()
            if name in ("model-server", "registry"):  # the others call them; the rest boot side by side
                self.services[name].wait_ready()
        for name in SERVICE_ORDER:
            self.services[name].wait_ready()

    def stop(self) -> None:
        for name in reversed(SERVICE_ORDER):
            self.services[name].stop()

    def restart(self, name: str) -> None:
        self.services[name].kill()
        self.services[name].start()

    def ingest_url(self) -> str:
        return self.urls["ingest"]

    def next_version(self) -> int:
        self._versions += 1
        return self._versions


# -- the device, the observer, the labeler --------------------------------------------------------------------


def image_pool(count: int = 40, seed: int = 7) -> list[bytes]:
    """Small synthetic JPEGs (tests/synthetic_photos.py): cheap to make, store and classify."""
    from tests.synthetic_photos import photo

    rng = random.Random(seed)
    pool = []
    for index in range(count):
        buffer = io.BytesIO()
        photo(("circle", "stripes")[index % 2], rng, size=64).save(buffer, "JPEG", quality=85)
        pool.append(buffer.getvalue())
    return pool


def unique_frame(image: bytes, tag: str) -> bytes:
    """The JPEG with a comment segment carrying ``tag``: new bytes (a new blob, a new sample), the same picture."""
    comment = tag.encode()
    return image[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + image[2:]


@dataclass
class Sent:
    index: int
    sha256: str
    published_at: float
    acked_at: float | None = None


class Device:
    """A camera: publishes unique frames at QoS 1 (clean session; paho resends unacknowledged ones after a
    reconnect); acknowledged means the broker's PUBACK arrived."""

    def __init__(self, port: int, site: str, pool: list[bytes], run: str) -> None:
        self.client = AsyncMqttClient("127.0.0.1", port, client_id=f"chaos-device-{run}", max_inflight=100)
        self.topic = topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device=DEVICE)
        self.pool = pool
        self.run = run
        self.sent: list[Sent] = []

    async def publish_all(
        self, count: int, rate: float, on_published: Callable[[int], None], more: Callable[[], bool] = lambda: False
    ) -> None:
        """``count`` pictures at ``rate``, and on while ``more()`` says so (a fault still running: the pipeline's
        recovery is seen on pictures published after it)."""
        await self.client.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        index = -1
        while (index := index + 1) < count or more():
            delay = started + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = unique_frame(self.pool[index % len(self.pool)], f"{self.run}-{index}")
            sent = Sent(index, hashlib.sha256(frame).hexdigest(), time.monotonic())
            self.sent.append(sent)
            acked = self.client.publish(self.topic, frame, qos=1)
            acked.add_done_callback(lambda future, s=sent: self._acked(future, s))
            on_published(index)

    @staticmethod
    def _acked(future: asyncio.Future[None], sent: Sent) -> None:
        if not future.cancelled() and future.exception() is None:
            sent.acked_at = time.monotonic()

    @property
    def acknowledged(self) -> int:
        return sum(1 for sent in self.sent if sent.acked_at is not None)

    async def wait_acked(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acknowledged < len(self.sent) and time.monotonic() < deadline:  # noqa: ASYNC110 - PUBACK callbacks
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.client.close()


@dataclass(frozen=True)
class Result:
    sample_id: str
    sha256: str
    top_label: str
    at: float


class Observer:
    """What devices of the site were answered: a persistent MQTT session (it outlives a broker restart) on
    ``dt/edgeloop/{site}/+/result``."""

    def __init__(self, port: int, site: str, run: str) -> None:
        self.results: list[Result] = []
        self.site = site
        self.client = AsyncMqttClient(
            "127.0.0.1", port, client_id=f"chaos-observer-{run}", session_expiry_s=3600, on_message=self._on_message
        )
        self.arrived = asyncio.Event()
        self.on_result: Callable[[Result], None] | None = None

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe(topics.mqtt_topic(topics.MQTT_RESULT, site=self.site, device="+"), qos=1)

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
            result = Result(body["sample_id"], body["image_sha256"], str(body.get("top_label")), time.monotonic())
        except (ValueError, KeyError):
            log.warning("a result that is not one: %r", payload[:200])
            return
        self.results.append(result)
        self.arrived.set()
        if self.on_result is not None:
            self.on_result(result)

    def first_answer(self, published_after: float, device: Device) -> float | None:
        """When the first picture published after the moment was answered."""
        fresh = {sent.sha256 for sent in device.sent if sent.published_at >= published_after}
        return min((result.at for result in self.results if result.sha256 in fresh), default=None)

    async def close(self) -> None:
        await self.client.close()


class Labeler:
    """A person at the labeling queue: labels every ``every``-th answered sample over ingest's HTTP API and tries
    again until ingest says 200 (a label answered 5xx or never answered may still have been stored: a retry
    relabels the sample and publishes SampleLabeled again)."""

    def __init__(self, ingest_url: str, every: int) -> None:
        self.ingest_url = ingest_url
        self.every = every
        self.queue: asyncio.Queue[Result] = asyncio.Queue()
        self.labeled: dict[str, int] = {}  # sample id -> attempts until a 200
        self.seen = 0
        self._task: asyncio.Task[None] | None = None

    def offer(self, result: Result) -> None:
        self.seen += 1
        if self.every > 0 and self.seen % self.every == 0:
            self.queue.put_nowait(result)

    def start(self) -> None:
        self._task = asyncio.create_task(self._work())

    async def drain(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def retried(self) -> int:
        return sum(1 for attempts in self.labeled.values() if attempts > 1)

    async def _work(self) -> None:
        async with httpx.AsyncClient(base_url=self.ingest_url, timeout=10) as http:
            while True:
                result = await self.queue.get()
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        response = await http.put(
                            f"/v1/samples/{result.sample_id}/label", json={"label": "cat", "labeled_by": "chaos"}
                        )
                        if response.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.5)
                self.labeled[result.sample_id] = attempts
                self.queue.task_done()


class Promoter:
    """Releases new versions the way the trainer does, over the registry's HTTP API: the export's folder (a copy of
    version 1 here: no training within a run), register, promote (forced: a person decided). The registry
    announces ModelRegistered and ModelPromoted; the deployer rolls the version out (local target) and announces
    DeploymentUpdated."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.released: list[int] = []

    async def release(self) -> int:
        version = self.pipeline.next_version()
        base = self.pipeline.model_base / MODEL_NAME
        await asyncio.to_thread(shutil.copytree, base / "1", base / str(version))
        async with httpx.AsyncClient(base_url=self.pipeline.urls["registry"], timeout=10) as http:
            await _until_ok(http, "POST", "/v1/models", {"name": MODEL_NAME}, accept=(201, 200, 409))
            body = {"version": version, "artifact_uri": str(base / str(version))}
            await _until_ok(http, "POST", f"/v1/models/{MODEL_NAME}/versions", body, accept=(201, 200, 409))
            promotion = {"version": version, "reason": "chaos", "actor": "chaos", "force": True}
            await _until_ok(http, "POST", f"/v1/models/{MODEL_NAME}/promotions", promotion, accept=(200,))
        self.released.append(version)
        return version


async def _until_ok(
    http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any], *, accept: tuple[int, ...]
) -> None:
    """A person retrying until the registry answers (it may be restarting its database)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            response = await http.request(method, path, json=body)
            if response.status_code in accept:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{method} {path} kept failing: {last}")
        await asyncio.sleep(0.5)


# -- faults ----------------------------------------------------------------------------------------------------


@dataclass
class FaultWindow:
    """One fault as it happened: what, when it started and ended (monotonic), and when the pipeline answered
    again."""

    what: str
    started: float
    ended: float
    ready: float | None = None  # when what was stopped or killed answered again
    recovered: float | None = None  # ready, and a picture published after the end was answered

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.ended


Fault = Callable[["ScenarioContext"], Awaitable[None]]


@dataclass
class ScenarioContext:
    pipeline: Pipeline
    published: asyncio.Event  # set once the device has published the first fraction of its images
    progress: Callable[[], float]  # fraction of the images published
    rng: random.Random
    windows: list[FaultWindow] = field(default_factory=list)

    async def at_fraction(self, fraction: float) -> None:
        while self.progress() < fraction:  # noqa: ASYNC110 - a counter, polled
            await asyncio.sleep(0.05)

    async def in_thread(self, function: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(function)


def kill_consumers(kills_each: int, services: tuple[str, ...] = CONSUMERS) -> Fault:
    """SIGKILL each consumer ``kills_each`` times at random points of the stream (seeded), restarting it at once.
    The services are killed independently of each other; a service is killed again only once it was ready again
    (killing a process still booting proves nothing)."""

    async def one_service(context: ScenarioContext, service: str, fractions: list[float]) -> None:
        process = context.pipeline.services[service]
        for fraction in fractions:
            await context.at_fraction(fraction)
            started = time.monotonic()
            await context.in_thread(process.kill)
            await context.in_thread(process.start)
            window = FaultWindow(f"SIGKILL {service}", started, time.monotonic())
            context.windows.append(window)
            await context.in_thread(process.wait_ready)
            window.ready = time.monotonic()

    async def fault(context: ScenarioContext) -> None:
        plans = {service: sorted(context.rng.uniform(0.05, 0.9) for _ in range(kills_each)) for service in services}
        await asyncio.gather(*(one_service(context, service, plans[service]) for service in services))

    return fault


def stop_broker(name: str, down_s: float) -> Fault:
    """Stop one of the harness's brokers at a third of the stream, keep it down ``down_s``, start it again."""

    async def fault(context: ScenarioContext) -> None:
        await context.at_fraction(0.3)
        server = context.pipeline.brokers.components[name]
        started = time.monotonic()
        await context.in_thread(lambda: server.stop(_echo))
        await asyncio.sleep(max(0.0, down_s - (time.monotonic() - started)))
        ended = time.monotonic()
        await context.in_thread(lambda: server.start(_echo))
        context.windows.append(FaultWindow(f"{name} stopped {down_s:.0f}s", started, ended, time.monotonic()))

    return fault


def pause_service(service: str, pause_s: float) -> Fault:
    """SIGSTOP a service past its Kafka session timeout, then SIGCONT: the group moved its partitions meanwhile."""

    async def fault(context: ScenarioContext) -> None:
        await context.at_fraction(0.3)
        process = context.pipeline.services[service]
        started = time.monotonic()
        process.signal(signal.SIGSTOP)
        await asyncio.sleep(pause_s)
        process.signal(signal.SIGCONT)
        ended = time.monotonic()
        context.windows.append(FaultWindow(f"SIGSTOP {service} {pause_s:.0f}s", started, ended, ended))

    return fault


# -- counting ----------------------------------------------------------------------------------------------------


@dataclass
class Counts:
    scenario: str
    site: str
    published: int
    acknowledged: int
    stored: int  # distinct pictures with a sample row
    sample_rows: int
    events: dict[str, int]  # records per topic of this site (dead letters: of the run)
    event_ids: dict[str, int]  # distinct event ids per topic
    inferences: int  # pictures with an InferenceCompleted
    predictions: int  # pictures whose sample has its prediction stored
    results: int  # pictures whose device result arrived
    labels_asked: int
    labels_stored: int
    labeled_events: int  # distinct SampleLabeled ids of the site
    labels_counted: int  # the trainer's follower: labels counted during the scenario
    dead_letters: int
    lags: dict[str, int]
    lost: dict[str, int]  # per effect: acknowledged pictures without it
    duplicates: dict[str, int]  # per effect: pictures (or samples) with it more than once
    duplicate_records: dict[str, int]  # the same event id more than once (consumers skip them)
    windows: list[FaultWindow]
    releases: int = 0
    rolled_out: int = 0
    labels_retried: int = 0
    duration_s: float = 0.0
    dead_letter_reasons: list[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        return max(self.lost.values(), default=0)

    @property
    def duplicate_effects(self) -> int:
        return sum(self.duplicates.values())

    @property
    def recovery_s(self) -> float | None:
        values = [window.recovery_s for window in self.windows]
        if any(value is None for value in values):
            return None
        return max((value for value in values if value is not None), default=0.0)

    def line(self) -> str:
        recovery = "never" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return (
            f"{self.scenario:<28} acknowledged {self.acknowledged:>6}  stored {self.stored:>6}  "
            f"lost {self.lost_total:>4}  duplicate effects {self.duplicate_effects:>3}  recovery {recovery}"
        )

    def details(self) -> str:
        windows = "; ".join(
            f"{w.what}: recovered {'never' if w.recovery_s is None else f'{w.recovery_s:.1f}s'}" for w in self.windows
        )
        return (
            f"  sample rows {self.sample_rows}, inferences {self.inferences}, predictions {self.predictions}, "
            f"results {self.results}, labels asked {self.labels_asked} (retried {self.labels_retried}) / stored "
            f"{self.labels_stored} / events {self.labeled_events} / counted by the trainer {self.labels_counted}, "
            f"dead letters {self.dead_letters}, versions released {self.releases} / rolled out {self.rolled_out}\n"
            f"  lost {self.lost}\n  duplicate effects {self.duplicates}\n"
            f"  duplicate records (skipped by id) {self.duplicate_records}\n"
            f"  events {self.events}\n  lags {self.lags}\n  faults: {windows}"
            + "".join(f"\n  dead letter: {reason}" for reason in self.dead_letter_reasons[:5])
        )


async def read_topics(
    bootstrap: str, names: tuple[str, ...] = topics.ALL_KAFKA_TOPICS
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every record of the topics (the contract's), read to their current end: (ce_id, body) per topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in names
            for partition in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batch.items():
                for message in messages:
                    headers = {name: value.decode() for name, value in message.headers or ()}
                    records[tp.topic].append((headers.get("ce_id", ""), json.loads(message.value)))
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):  # compaction may leave the end unreachable by records
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return records


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # aiokafka has no public refresh
    return consumer.partitions_for_topic(topic) or set()


async def consumer_lags(bootstrap: str) -> dict[str, int]:
    """Per consumer group: records of its topics past its committed offsets (all of them where it committed
    none)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    lags: dict[str, int] = {}
    try:
        for group, group_topics in CONSUMER_GROUPS.items():
            committed = await admin.list_consumer_group_offsets(group)
            partitions = [
                TopicPartition(topic, partition)
                for topic in group_topics
                for partition in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
            ]
            starts = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
            lags[group] = sum(
                max(0, ends[tp] - (committed[tp].offset if tp in committed else starts[tp])) for tp in partitions
            )
    finally:
        await consumer.stop()
        await admin.close()
    return lags


def ingest_rows(brokers: Brokers, schema: str, site: str) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    url = brokers.database_url().replace("+psycopg", "")
    from edgeloop_ingest.adapters.samples import samples as samples_table

    with psycopg.connect(url, row_factory=dict_row) as connection:
        return connection.execute(
            f'SELECT sample_id, sha256, predicted_label, label FROM "{schema}".{samples_table.name} WHERE site_id = %s',
            (site,),
        ).fetchall()


def trainer_label_count(brokers: Brokers, schema: str) -> int:
    import psycopg
    from edgeloop_trainer.adapters.runs import label_counts

    url = brokers.database_url().replace("+psycopg", "")
    with psycopg.connect(url) as connection:
        row = connection.execute(
            f'SELECT labels_since_request FROM "{schema}".{label_counts.name} WHERE model_name = %s', (MODEL_NAME,)
        ).fetchone()
    return int(row[0]) if row else 0


# -- a scenario --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Fault | None
    images: int
    rate: float = 15.0
    label_every: int = 10
    releases: tuple[float, ...] = (0.2, 0.6)  # a new version released and promoted at these fractions


async def run_scenario(
    pipeline: Pipeline, scenario: Scenario, *, seed: int = 1, quiet_s: float = 20.0, pool: list[bytes] | None = None
) -> Counts:
    """Publish the scenario's images while its fault runs, wait for quiescence, count."""
    brokers = pipeline.brokers
    run = f"{scenario.name}-{uuid.uuid4().hex[:6]}"
    site = f"chaos-{run}"[:64]
    began = time.monotonic()
    labels_before = await asyncio.to_thread(trainer_label_count, brokers, pipeline.schemas["trainer"])
    dead_before = len((await read_topics(brokers.kafka_bootstrap, (topics.DEAD_LETTER,))).get(topics.DEAD_LETTER, []))

    observer = Observer(brokers.mosquitto.port, site, run)
    labeler = Labeler(pipeline.ingest_url(), scenario.label_every)
    observer.on_result = labeler.offer
    await observer.start()
    labeler.start()
    device = Device(brokers.mosquitto.port, site, pool or image_pool(), run)
    published = 0

    def on_published(index: int) -> None:
        nonlocal published
        published = index + 1

    context = ScenarioContext(pipeline, asyncio.Event(), lambda: published / scenario.images, random.Random(seed))
    fault_task = asyncio.create_task(scenario.fault(context)) if scenario.fault else None
    promoter = Promoter(pipeline)

    async def releases() -> None:
        for fraction in scenario.releases:
            await context.at_fraction(fraction)
            await promoter.release()

    release_task = asyncio.create_task(releases())
    try:
        tail_until: list[float] = []

        def more() -> bool:
            """While the fault runs, and a few seconds after it, so that fresh pictures show the recovery."""
            if fault_task is None:
                return False
            if not fault_task.done():
                return True
            if not tail_until:
                tail_until.append(time.monotonic() + 5.0)
            return time.monotonic() < tail_until[0]

        await device.publish_all(scenario.images, scenario.rate, on_published, more)
        if fault_task is not None:
            await fault_task
        await release_task
        await device.wait_acked(timeout_s=120)
        await _quiesce(observer, device, quiet_s)
        await labeler.drain(timeout_s=60)
        await _wait_for_lags(brokers.kafka_bootstrap, timeout_s=60)
        await _wait_for_rollout(brokers.kafka_bootstrap, promoter.released[-1:], timeout_s=60)
    finally:
        for task in (fault_task, release_task):
            if task is not None and not task.done():
                task.cancel()
        await device.close()
        await observer.close()
    for window in context.windows:
        answered = observer.first_answer(window.ended, device)
        if answered is not None and window.ready is not None:
            window.recovered = max(answered, window.ready)
    return await _count(
        pipeline, scenario, site, device, observer, labeler, promoter, labels_before, dead_before, context, began
    )


async def _quiesce(observer: Observer, device: Device, quiet_s: float) -> None:
    """Until every acknowledged picture has a result, or no result came for ``quiet_s``."""
    acked = {sent.sha256 for sent in device.sent if sent.acked_at is not None}
    last_count, last_change = -1, time.monotonic()
    while True:
        answered = {result.sha256 for result in observer.results}
        if acked <= answered:
            return
        if len(observer.results) != last_count:
            last_count, last_change = len(observer.results), time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            return
        await asyncio.sleep(0.5)


async def _wait_for_rollout(bootstrap: str, versions: list[int], timeout_s: float) -> None:
    """Until the deployer said each version is ready in its node group."""
    deadline = time.monotonic() + timeout_s
    while versions and time.monotonic() < deadline:
        records = await read_topics(bootstrap, (topics.DEPLOYMENTS_UPDATED,))
        ready = {body.get("actual_version") for _, body in ready_rollouts(records)}
        if set(versions) <= ready:
            return
        await asyncio.sleep(1.0)


def ready_rollouts(records: dict[str, list[tuple[str, dict[str, Any]]]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (event_id, body)
        for event_id, body in records.get(topics.DEPLOYMENTS_UPDATED, [])
        if body.get("model_name") == MODEL_NAME and body.get("phase") == "ready"
    ]


async def _wait_for_lags(bootstrap: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any((await consumer_lags(bootstrap)).values()):
            return
        await asyncio.sleep(1.0)


async def _count(
    pipeline: Pipeline,
    scenario: Scenario,
    site: str,
    device: Device,
    observer: Observer,
    labeler: Labeler,
    promoter: Promoter,
    labels_before: int,
    dead_before: int,
    context: ScenarioContext,
    began: float,
) -> Counts:
    brokers = pipeline.brokers
    records = await read_topics(brokers.kafka_bootstrap)
    rows = await asyncio.to_thread(ingest_rows, brokers, pipeline.schemas["ingest"], site)
    labels_after = await asyncio.to_thread(trainer_label_count, brokers, pipeline.schemas["trainer"])
    lags = await consumer_lags(brokers.kafka_bootstrap)

    def of_site(topic: str) -> list[tuple[str, dict[str, Any]]]:
        return [(event_id, body) for event_id, body in records.get(topic, []) if body.get("site_id") == site]

    images = of_site(topics.IMAGES_RECEIVED)
    inferences = of_site(topics.INFERENCES_COMPLETED)
    labeled = of_site(topics.SAMPLES_LABELED)
    dead = records.get(topics.DEAD_LETTER, [])[dead_before:]

    acked = {sent.sha256 for sent in device.sent if sent.acked_at is not None}
    samples_per_picture = Counter(row["sha256"] for row in rows)
    predicted = Counter(row["sha256"] for row in rows if row["predicted_label"] is not None)
    inference_ids: dict[str, set[str]] = defaultdict(set)
    for event_id, body in inferences:
        inference_ids[body["image"]["sha256"]].add(event_id)
    results_per_picture = Counter(result.sha256 for result in observer.results)
    # The same answer (same sample) delivered twice is MQTT QoS 1's at-least-once, which the device tells apart by
    # its sample id; two answers naming different samples would be two effects.
    answers_per_picture: dict[str, set[str]] = defaultdict(set)
    for result in observer.results:
        answers_per_picture[result.sha256].add(result.sample_id)
    label_ids: dict[str, set[str]] = defaultdict(set)
    for event_id, body in labeled:
        label_ids[body["sample_id"]].add(event_id)
    labels_stored = sum(1 for row in rows if row["label"] is not None)
    released = set(promoter.released)

    def ids_per_version(items: list[tuple[str, dict[str, Any]]], key: str) -> dict[int, set[str]]:
        found: dict[int, set[str]] = defaultdict(set)
        for event_id, body in items:
            if body.get("model_name") == MODEL_NAME and body.get(key) in released:
                found[body[key]].add(event_id)
        return found

    registered = ids_per_version(records.get(topics.MODELS_REGISTERED, []), "version")
    promoted = ids_per_version(records.get(topics.MODELS_PROMOTED, []), "version")
    rolled_out = ids_per_version(ready_rollouts(records), "actual_version")
    labels_counted = labels_after - labels_before

    lost = {
        "stored": len(acked - set(samples_per_picture)),
        "inference": len(acked - set(inference_ids)),
        "prediction stored": len(acked - set(predicted)),
        "device result": len(acked - set(results_per_picture)),
        "label": len(set(labeler.labeled) - set(label_ids)),
        "label counted": max(0, len(labeler.labeled) - labels_counted),
        "registration": len(released - set(registered)),
        "promotion": len(released - set(promoted)),
        # An earlier version may be superseded before it is ready; the last one must be rolled out.
        "rollout": len(set(promoter.released[-1:]) - set(rolled_out)),
    }
    # A retried label request relabels: its second SampleLabeled is the client's doing, not a pipeline duplicate.
    retried = {sample for sample, attempts in labeler.labeled.items() if attempts > 1}
    duplicates = {
        "sample": sum(1 for n in samples_per_picture.values() if n > 1),
        "inference": sum(1 for ids in inference_ids.values() if len(ids) > 1),
        "device result": sum(1 for samples in answers_per_picture.values() if len(samples) > 1),
        "label": sum(1 for sample, ids in label_ids.items() if len(ids) > 1 and sample not in retried),
        "label counted": max(0, labels_counted - sum(len(ids) for ids in label_ids.values())),
        "registration": sum(1 for ids in registered.values() if len(ids) > 1),
        "promotion": sum(1 for ids in promoted.values() if len(ids) > 1),
        "rollout": sum(1 for ids in rolled_out.values() if len(ids) > 1),
    }

    def repeated(items: list[tuple[str, dict[str, Any]]]) -> int:
        return len(items) - len({event_id for event_id, _ in items})

    return Counts(
        scenario=scenario.name,
        site=site,
        published=len(device.sent),
        acknowledged=len(acked),
        stored=len(set(samples_per_picture) & acked),
        sample_rows=len(rows),
        events={
            "images.received": len(images),
            "inferences.completed": len(inferences),
            "samples.labeled": len(labeled),
            "deadletter": len(dead),
        },
        event_ids={
            "images.received": len({i for i, _ in images}),
            "inferences.completed": len({i for i, _ in inferences}),
            "samples.labeled": len({i for i, _ in labeled}),
        },
        inferences=len(set(inference_ids) & acked),
        predictions=len(set(predicted) & acked),
        results=len(set(results_per_picture) & acked),
        labels_asked=len(labeler.labeled),
        labels_stored=labels_stored,
        labeled_events=len({i for i, _ in labeled}),
        labels_counted=labels_counted,
        dead_letters=len(dead),
        lags=lags,
        lost=lost,
        duplicates=duplicates,
        duplicate_records={
            "images.received": repeated(images),
            "inferences.completed": repeated(inferences),
            "samples.labeled": repeated(labeled),
            "device results (same sample again)": sum(n - 1 for n in results_per_picture.values()),
        },
        windows=context.windows,
        labels_retried=len(retried),
        releases=len(released),
        rolled_out=len(rolled_out),
        duration_s=time.monotonic() - began,
        dead_letter_reasons=[str(body.get("reason", ""))[:300] for _, body in dead],
    )


# -- the whole thing -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def chaos_pipeline(work_dir: Path, model_base: Path, *, keep: bool = False) -> Iterator[Pipeline]:
    """Brokers and services of the harness's own under ``work_dir``; everything stopped and removed afterwards."""
    work_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(work_dir, 0o755)  # the brokers run as their own users (mosquitto, postgres) when we are root
    brokers = Brokers(work_dir / "state")
    pipeline = Pipeline(brokers, work_dir, model_base)
    try:
        brokers.start()
        pipeline.start()
        yield pipeline
    finally:
        pipeline.stop()
        brokers.stop()
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
