"""``edgeloop device simulate``: a device like the Pi camera, over MQTT.

It publishes a folder's JPEG/PNG images (sorted by name) with QoS 1 to
``dt/edgeloop/{site}/{device}/image`` at a steady rate, listens on its result
topic and prints each result as it arrives, and answers
``cmd/edgeloop/{site}/{device}/capture`` by sending its next image at once.

:class:`DeviceSimulator` is the same device for programs (the demo, the
benchmarks): give it a :class:`SimulatorConfig`, ``await run()``, read the
:class:`SimulationSummary`. A result is matched to the image it answers by
the image's SHA-256 (``image_sha256`` in the result), so results may arrive in
any order.

``--kind sensor`` simulates machines with sensors instead (docs/telemetry.md, "The simulated sensors"): many
devices from one process, each publishing a reading per step with QoS 1 to ``dt/edgeloop/{site}/{device}/telemetry``
(the values from :class:`edgeloop.sensors.SensorFleet`), while it listens on each device's ``.../alert`` topic and
prints and counts the maintenance alerts. :class:`SensorSimulator` is the same for programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import re
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from edgeloop_common import topics
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttUnavailableError
from edgeloop_common.mqtt_auth import MqttAuth
from edgeloop_common.settings import CommonSettings
from edgeloop_common.telemetry.messages import MAX_SAMPLES
from edgeloop_common.tracing import new_traceparent, trace_id

from edgeloop import sensors

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}

app = typer.Typer(no_args_is_help=True)


@dataclass(frozen=True)
class SimulatorConfig:
    images_dir: Path
    site: str
    device: str
    rate: float = 1.0
    """Images per second; 0 sends only when a capture command asks."""
    count: int | None = None
    """Images to send (and results to wait for); None: every image once, or forever with ``loop``."""
    loop: bool = False
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    auth: MqttAuth | None = None
    """The device's identity on a secured broker (``edgeloop device add``) and TLS; None: anonymous."""
    qos: int = 1
    timeout_s: float = 30.0
    """How long to wait for outstanding results after the last image was sent."""
    trace: bool = False
    """MQTT 5, each picture starting a trace (a ``traceparent`` user property; docs/observability.md)."""


@dataclass(frozen=True)
class DeviceResult:
    image_name: str
    top_label: str | None
    confidence: float | None
    model_name: str | None
    model_version: int | None
    latency_ms: float
    payload: dict[str, Any]
    trace_id: str | None = None  # the trace the picture started (``--trace``)


@dataclass
class SimulationSummary:
    sent: int = 0
    acked: int = 0
    results: int = 0
    unmatched_results: int = 0
    captures: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    timed_out: bool = False

    @property
    def missing(self) -> int:
        return self.sent - self.results

    def percentile_ms(self, q: float) -> float | None:
        """Nearest-rank percentile of publish -> result latency; None without results."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]

    def describe(self) -> str:
        p50, p99 = self.percentile_ms(50), self.percentile_ms(99)
        latency = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms" if p50 is not None and p99 is not None else "no results"
        extra = f", {self.unmatched_results} unmatched" if self.unmatched_results else ""
        return (
            f"sent {self.sent}, acked {self.acked}, results {self.results} ({self.missing} missing{extra}); "
            f"publish->result latency {latency}"
        )


def image_files(directory: Path) -> list[Path]:
    """The folder's JPEG and PNG files, sorted by name."""
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {directory} does not exist")
    return sorted(path for path in directory.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class _Sent:
    image_name: str
    published_at: float
    trace_id: str | None = None


class DeviceSimulator:
    def __init__(
        self,
        config: SimulatorConfig,
        *,
        on_result: Callable[[DeviceResult], None] | None = None,
        on_unmatched: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.on_result = on_result
        self.on_unmatched = on_unmatched
        self.summary = SimulationSummary()
        self.image_topic = topics.mqtt_topic(topics.MQTT_IMAGE, site=config.site, device=config.device)
        self.result_topic = topics.mqtt_topic(topics.MQTT_RESULT, site=config.site, device=config.device)
        self.capture_topic = topics.mqtt_topic(topics.MQTT_CAPTURE, site=config.site, device=config.device)
        self._images = image_files(config.images_dir)
        if not self._images:
            raise FileNotFoundError(f"no JPEG or PNG images in {config.images_dir}")
        self._payloads: dict[Path, tuple[bytes, str]] = {}
        self._awaiting: dict[str, deque[_Sent]] = {}
        self._captures = asyncio.Semaphore(0)
        self._all_results = asyncio.Event()
        self._stop = asyncio.Event()
        self._client: AsyncMqttClient | None = None

    @property
    def target(self) -> int | None:
        """How many images this run sends: None means until stopped."""
        if self.config.count is not None:
            return self.config.count if self.config.loop else min(self.config.count, len(self._images))
        return None if self.config.loop else len(self._images)

    def stop(self) -> None:
        """End the run early (Ctrl-C); ``run`` returns the summary so far."""
        self._stop.set()

    async def run(self) -> SimulationSummary:
        client = AsyncMqttClient(
            self.config.mqtt_host,
            self.config.mqtt_port,
            on_message=self._on_message,
            auth=self.config.auth,
            protocol="5" if self.config.trace else "3.1.1",
        )
        self._client = client
        await client.connect()
        try:
            await client.subscribe(self.result_topic, qos=1)
            await client.subscribe(self.capture_topic, qos=1)
            sender = asyncio.create_task(self._send_all(client))
            stopped = asyncio.create_task(self._stop.wait())
            await asyncio.wait({sender, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            else:
                sender.result()
                await self._wait_for_results()
            stopped.cancel()
        finally:
            await client.close()
        return self.summary

    async def _wait_for_results(self) -> None:
        if self.summary.results >= self.summary.sent:
            return
        waiting = {asyncio.create_task(self._all_results.wait()), asyncio.create_task(self._stop.wait())}
        done, pending = await asyncio.wait(waiting, timeout=self.config.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        self.summary.timed_out = not done and self.summary.results < self.summary.sent

    async def _send_all(self, client: AsyncMqttClient) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        index = 0
        while self.target is None or index < self.target:
            if self.config.rate > 0:
                await self._next_turn(started + index / self.config.rate - loop.time())
            else:
                await self._captures.acquire()
            self._publish(client, self._images[index % len(self._images)])
            index += 1

    async def _next_turn(self, delay_s: float) -> None:
        """Wait until the schedule says so, or until a capture command asks for the next image now."""
        if delay_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._captures.acquire()

    def _publish(self, client: AsyncMqttClient, path: Path) -> None:
        data, sha256 = self._payload(path)
        traceparent = new_traceparent() if self.config.trace else None
        self._awaiting.setdefault(sha256, deque()).append(_Sent(path.name, time.perf_counter(), trace_id(traceparent)))
        properties = {"traceparent": traceparent} if traceparent else None
        acked = client.publish(self.image_topic, data, qos=self.config.qos, user_properties=properties)
        acked.add_done_callback(self._count_ack)
        self.summary.sent += 1

    def _payload(self, path: Path) -> tuple[bytes, str]:
        if path not in self._payloads:
            data = path.read_bytes()
            self._payloads[path] = (data, hashlib.sha256(data).hexdigest())
        return self._payloads[path]

    def _count_ack(self, acked: asyncio.Future[None]) -> None:
        if not acked.cancelled() and acked.exception() is None:
            self.summary.acked += 1

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.capture_topic:
            self.summary.captures += 1
            self._captures.release()
        elif topic == self.result_topic:
            self._on_result(payload)

    def _on_result(self, payload: bytes) -> None:
        arrived = time.perf_counter()
        try:
            result = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            result = {"error": "result is not JSON", "raw": payload[:200].decode("utf-8", errors="replace")}
        sent = self._match(result)
        if sent is None:
            self.summary.unmatched_results += 1
            if self.on_unmatched is not None:
                self.on_unmatched(result)
            return
        latency_ms = (arrived - sent.published_at) * 1000.0
        self.summary.results += 1
        self.summary.latencies_ms.append(latency_ms)
        if self.on_result is not None:
            self.on_result(
                DeviceResult(
                    image_name=sent.image_name,
                    top_label=result.get("top_label"),
                    confidence=result.get("confidence"),
                    model_name=result.get("model_name"),
                    model_version=result.get("model_version"),
                    latency_ms=latency_ms,
                    payload=result,
                    trace_id=sent.trace_id,
                )
            )
        if self.summary.results >= self.summary.sent and (self.target is None or self.summary.sent >= self.target):
            self._all_results.set()

    def _match(self, result: dict[str, Any]) -> _Sent | None:
        sha256 = result.get("image_sha256")
        if isinstance(sha256, str):
            queue = self._awaiting.get(sha256)
            return queue.popleft() if queue else None
        # A result without the image's hash answers the oldest image still waiting.
        oldest = min(
            (queue for queue in self._awaiting.values() if queue), key=lambda q: q[0].published_at, default=None
        )
        return oldest.popleft() if oldest else None


@dataclass(frozen=True)
class SensorSimulatorConfig:
    site: str
    device: str
    """The device id, or with several devices their prefix: ``{device}-000``, ``{device}-001``, ..."""
    devices: int = 1
    rate: float = 1.0
    """Readings per second of each device; 0: as fast as the broker acknowledges."""
    count: int | None = None
    """Steps (one reading of every running machine each); None: until stopped."""
    seed: int = 0
    profile: str = "temperate"
    change: str | None = None
    change_at: int | None = None
    """The change applies from this step on."""
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    auth: MqttAuth | None = None
    qos: int = 1
    timeout_s: float = 30.0
    """How long to wait for the broker's acknowledgements after the last reading."""
    linger_s: float = 1.0
    """How long to keep listening for alerts after the last acknowledgement."""
    samples_per_message: int = 1
    """Each device sends this many readings in one message (a batch of samples, docs/telemetry.md), as a device
    that wakes its radio now and then would; 1: a message per reading."""


@dataclass(frozen=True)
class SensorAlert:
    device: str
    payload: dict[str, Any]


@dataclass
class SensorSummary:
    sent: int = 0
    acked: int = 0
    failures: int = 0
    maintenances: int = 0
    alerts: int = 0
    alerts_by_device: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False

    def describe(self) -> str:
        return (
            f"sent {self.sent} readings, acked {self.acked}; {self.failures} failures, {self.maintenances} "
            f"maintenances; {self.alerts} alerts from {len(self.alerts_by_device)} devices"
        )


class SensorSimulator:
    """Machines with sensors over MQTT: readings out, maintenance alerts in."""

    def __init__(self, config: SensorSimulatorConfig, *, on_alert: Callable[[SensorAlert], None] | None = None):
        self.config = config
        self.on_alert = on_alert
        self.summary = SensorSummary()
        names = [config.device] if config.devices == 1 else [f"{config.device}-{i:03d}" for i in range(config.devices)]
        self.fleet = sensors.SensorFleet(
            config.site,
            names,
            seed=config.seed,
            profile=config.profile,
            change=config.change,
            change_at=config.change_at,
        )
        self.telemetry_topics = {
            name: topics.mqtt_topic(topics.MQTT_TELEMETRY, site=config.site, device=name) for name in names
        }
        self.alert_topics = {
            topics.mqtt_topic(topics.MQTT_ALERT, site=config.site, device=name): name for name in names
        }
        self._stop = asyncio.Event()
        self._unacked = 0  # readings sent and not acknowledged yet
        self._acks_done = asyncio.Event()
        self._unsent: dict[str, list[dict[str, Any]]] = {name: [] for name in names}  # a batch being filled

    @property
    def devices(self) -> list[str]:
        return self.fleet.names

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> SensorSummary:
        config = self.config
        client = AsyncMqttClient(config.mqtt_host, config.mqtt_port, on_message=self._on_message, auth=config.auth)
        await client.connect()
        try:
            await client.subscribe(list(self.alert_topics), qos=1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            step = 0
            while (config.count is None or step < config.count) and not self._stop.is_set():
                if config.rate > 0:
                    delay = started + step / config.rate - loop.time()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(delay):
                                await self._stop.wait()
                        if self._stop.is_set():
                            break
                elif self._unacked > 10_000:  # no pacing: let the broker's acknowledgements catch up
                    await asyncio.sleep(0.001)
                    continue
                self._publish_step(client)
                step += 1
                if config.rate <= 0 and step % 50 == 0:
                    await asyncio.sleep(0)  # let acknowledgements and alerts in
            for device in self._unsent:  # what the batches being filled hold goes out before the end
                self._send(client, device)
            if self._unacked:
                self._acks_done.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(config.timeout_s):
                        await self._acks_done.wait()
                self.summary.timed_out = self._unacked > 0
            if config.linger_s > 0 and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(config.linger_s):
                        await self._stop.wait()
        finally:
            await client.close()
        return self.summary

    def _publish_step(self, client: AsyncMqttClient) -> None:
        for record in self.fleet.step(datetime.now(UTC)):
            sample: dict[str, Any] = {"measured_at": record.measured_at.isoformat(), "readings": record.readings}
            if record.machine_event is not None:
                sample["machine_event"] = record.machine_event
                if record.machine_event == "failure":
                    self.summary.failures += 1
                else:
                    self.summary.maintenances += 1
            self._unsent[record.device_id].append(sample)
            if len(self._unsent[record.device_id]) >= self.config.samples_per_message:
                self._send(client, record.device_id)

    def _send(self, client: AsyncMqttClient, device: str) -> None:
        """The device's readings not sent yet: one message (a batch of samples when there are several)."""
        samples = self._unsent[device]
        if not samples:
            return
        self._unsent[device] = []
        message = samples[0] if self.config.samples_per_message == 1 else {"samples": samples}
        acked = client.publish(self.telemetry_topics[device], json.dumps(message).encode(), qos=self.config.qos)
        self._unacked += len(samples)
        self.summary.sent += len(samples)
        acked.add_done_callback(functools.partial(self._count_ack, len(samples)))

    def _count_ack(self, readings: int, acked: asyncio.Future[None]) -> None:
        self._unacked -= readings
        if not acked.cancelled() and acked.exception() is None:
            self.summary.acked += readings
        if self._unacked == 0:
            self._acks_done.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        device = self.alert_topics.get(topic)
        if device is None:
            return
        try:
            alert = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            alert = {"error": "alert is not JSON", "raw": payload[:200].decode("utf-8", errors="replace")}
        if not isinstance(alert, dict):
            alert = {"alert": alert}
        self.summary.alerts += 1
        self.summary.alerts_by_device[device] = self.summary.alerts_by_device.get(device, 0) + 1
        if self.on_alert is not None:
            self.on_alert(SensorAlert(device, alert))


def format_alert(alert: SensorAlert) -> str:
    probability = alert.payload.get("failure_probability")
    threshold = alert.payload.get("threshold")
    if isinstance(probability, int | float) and isinstance(threshold, int | float):
        model = f"{alert.payload.get('model_name', '?')} v{alert.payload.get('model_version', '?')}"
        return f"ALERT {alert.device}: failure probability {probability:.3f} >= {threshold:.3f} ({model})"
    return f"ALERT {alert.device}: {json.dumps(alert.payload)[:200]}"


def format_result(result: DeviceResult) -> str:
    if result.top_label is None:
        return f"{result.image_name} -> no label: {json.dumps(result.payload)[:200]}"
    confidence = f"{result.confidence:.3f}" if isinstance(result.confidence, int | float) else "?"
    model = f"{result.model_name} v{result.model_version}" if result.model_name else "unknown model"
    quality = result.payload.get("quality", "ok")
    doubt = f"  [{quality}: nothing to classify]" if quality != "ok" else ""
    traced = f"  trace {result.trace_id}" if result.trace_id else ""
    return (
        f"{result.image_name} -> {result.top_label} {confidence}{doubt}  ({model})  {result.latency_ms:.1f} ms{traced}"
    )


@app.command("simulate")
def simulate(
    site: Annotated[str, typer.Option("--site", help="Site id (one MQTT topic level).")],
    device: Annotated[
        str, typer.Option("--device", help="Device id (one MQTT topic level); with --devices N, their prefix.")
    ],
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder of JPEG/PNG images, sent in name order (camera).")
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", help="camera (pictures from --images) or sensor (machines with sensors).")
    ] = "camera",
    rate: Annotated[
        float,
        typer.Option(
            "--rate",
            min=0.0,
            help="Images per second; 0: only on capture commands. Sensor: readings per second of each device; "
            "0: as fast as the broker acknowledges.",
        ),
    ] = 1.0,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="Images to send; default: each once. Sensor: readings per device."),
    ] = None,
    devices: Annotated[int, typer.Option("--devices", min=1, help="Sensor: machines simulated by this process.")] = 1,
    profile: Annotated[
        str, typer.Option("--profile", help=f"Sensor: the site's profile ({', '.join(sensors.PROFILES)}).")
    ] = "temperate",
    change: Annotated[
        str | None,
        typer.Option("--change", help=f"Sensor: a change that drives drift ({', '.join(sensors.CHANGES)})."),
    ] = None,
    change_at: Annotated[
        int, typer.Option("--change-at", min=0, help="Sensor: the change applies from this reading on.")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Sensor: seed of the machines' wear and noise.")] = 0,
    samples_per_message: Annotated[
        int,
        typer.Option(
            "--samples-per-message",
            min=1,
            max=MAX_SAMPLES,
            help="Sensor: readings each device sends in one message (a batch of samples); 1: one per message.",
        ),
    ] = 1,
    loop: Annotated[bool, typer.Option("--loop", help="Start over at the first image after the last.")] = False,
    mqtt_host: Annotated[str | None, typer.Option("--mqtt-host", help="Broker host [EDGELOOP_MQTT_HOST].")] = None,
    mqtt_port: Annotated[int | None, typer.Option("--mqtt-port", help="Broker port [EDGELOOP_MQTT_PORT].")] = None,
    qos: Annotated[int, typer.Option("--qos", min=0, max=1, help="MQTT QoS of the image messages.")] = 1,
    username: Annotated[
        str | None, typer.Option("--username", help="The device's MQTT username [EDGELOOP_MQTT_USERNAME].")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option("--password", help="Its password [EDGELOOP_MQTT_PASSWORD]; prefer the variable to the option."),
    ] = None,
    tls_ca_file: Annotated[
        Path | None, typer.Option("--tls-ca-file", help="CA of the broker's TLS listener [EDGELOOP_MQTT_TLS_CA_FILE].")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for results after the last image.")
    ] = 30.0,
    trace: Annotated[
        bool,
        typer.Option(
            "--trace",
            help="Camera: MQTT 5, each picture starting a trace (a traceparent user property) that its result "
            "continues; its trace id is printed with the result (docs/observability.md).",
        ),
    ] = False,
) -> None:
    """Publish images like a Pi camera and print each result as it arrives; or (--kind sensor) sensor readings."""
    for name, value in (("site", site), ("device", device)):
        if not _is_id(value):
            raise typer.BadParameter(f"{value!r} is not a valid {name} id (letters, digits, '_', '.', '-')")
    if kind not in ("camera", "sensor"):
        raise typer.BadParameter(f"--kind must be camera or sensor, got {kind!r}")
    if kind == "sensor" and profile not in sensors.PROFILES:
        raise typer.BadParameter(f"--profile must be one of {', '.join(sensors.PROFILES)}, got {profile!r}")
    if kind == "sensor" and change is not None and change not in sensors.CHANGES:
        raise typer.BadParameter(f"--change must be one of {', '.join(sensors.CHANGES)}, got {change!r}")
    if kind == "camera" and images is None:
        raise typer.BadParameter("--images is needed for a camera (or --kind sensor)")
    common = CommonSettings()
    auth = common.mqtt_auth()
    auth = MqttAuth(
        username=username or auth.username,
        password=password or auth.password,
        tls=auth.tls or tls_ca_file is not None,
        ca_file=tls_ca_file or auth.ca_file,
        cert_file=auth.cert_file,
        key_file=auth.key_file,
    )
    if kind == "sensor":
        sensor_config = SensorSimulatorConfig(
            site=site,
            device=device,
            devices=devices,
            rate=rate,
            count=count,
            seed=seed,
            profile=profile,
            change=change,
            change_at=change_at if change is not None else None,
            mqtt_host=mqtt_host or common.mqtt_host,
            mqtt_port=mqtt_port or common.mqtt_port,
            auth=auth,
            qos=qos,
            timeout_s=timeout,
            samples_per_message=samples_per_message,
        )
        try:
            sensor_summary = asyncio.run(_simulate_sensors(sensor_config))
        except MqttUnavailableError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(sensor_summary.describe())
        if sensor_summary.timed_out or sensor_summary.acked < sensor_summary.sent:
            raise typer.Exit(1)
        return
    assert images is not None
    config = SimulatorConfig(
        images_dir=images,
        site=site,
        device=device,
        rate=rate,
        count=count,
        loop=loop,
        mqtt_host=mqtt_host or common.mqtt_host,
        mqtt_port=mqtt_port or common.mqtt_port,
        auth=auth,
        qos=qos,
        timeout_s=timeout,
        trace=trace,
    )
    try:
        summary = asyncio.run(_simulate(config))
    except (FileNotFoundError, MqttUnavailableError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(summary.describe())
    if summary.timed_out or summary.missing:
        raise typer.Exit(1)


async def _simulate(config: SimulatorConfig) -> SimulationSummary:
    simulator = DeviceSimulator(
        config,
        on_result=lambda result: typer.echo(format_result(result)),
        on_unmatched=lambda result: typer.echo(f"result for an image this device did not send: {result}"),
    )
    target = simulator.target
    typer.echo(
        f"device {config.site}/{config.device}: {target if target is not None else 'endless'} image(s) from "
        f"{config.images_dir} at {config.rate}/s to mqtt://{config.mqtt_host}:{config.mqtt_port} "
        f"({simulator.image_topic}); Ctrl-C stops"
    )
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows, nor off the main thread
        loop.add_signal_handler(signal.SIGINT, simulator.stop)
    return await simulator.run()


async def _simulate_sensors(config: SensorSimulatorConfig) -> SensorSummary:
    simulator = SensorSimulator(config, on_alert=lambda alert: typer.echo(format_alert(alert)))
    change = f", {config.change} from reading {config.change_at}" if config.change else ""
    typer.echo(
        f"site {config.site}: {len(simulator.devices)} machine(s) ({config.profile}{change}), "
        f"{config.count if config.count is not None else 'endless'} reading(s) each at {config.rate}/s to "
        f"mqtt://{config.mqtt_host}:{config.mqtt_port} (dt/edgeloop/{config.site}/<device>/telemetry); "
        "alerts on .../alert; Ctrl-C stops"
    )
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, simulator.stop)
    return await simulator.run()


def _is_id(value: str) -> bool:
    return re.fullmatch(topics.ID_PATTERN, value) is not None
