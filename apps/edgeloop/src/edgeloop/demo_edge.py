"""The demo's edge site: one edge site beside the cloud services, and (``--offline``) the cloud cut off from it.

What runs at the site, as on a KubeEdge node group (docs/edge.md): its own MQTT broker (a second local broker),
its node group's model server (a second lite model server, on the folder ``<data>/node-groups/<site>`` with the
newest version linked in, as the deployer's local target does) and the edge agent (``edgeloop_edge``), whose
links to the cloud are the gateway (joint inference for hard examples) and ingest (the uplink). A simulated
camera at the site publishes to the site's broker and prints each answer with where it came from
(``served by edge`` or ``served by cloud``) and the version.

The site reaches the cloud through :class:`CloudLink`, a relay standing for its WAN link. ``--offline`` cuts it
for a while: new connections are refused and open ones dropped, so ingest and the gateway are unreachable from
the site (the cloud services themselves keep running for the cloud's own devices). The agent answers from the
edge, its uplink backlog grows (``GET /v1/status``); when the link is back the backlog drains to 0 and ingest is
asked for every record (``GET /v1/uplink/{record_id}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from edgeloop.device import DeviceResult, DeviceSimulator, SimulationSummary, SimulatorConfig, format_result
from edgeloop.local_mqtt import start_local_broker
from edgeloop.processes import any_free_port, pick_port
from edgeloop.system import System

DEFAULT_EDGE_SITE = "site-edge"
EDGE_BROKER_PORT = 1884  # wanted; any free port if taken
EDGE_AGENT_PORT = 8087  # the edge agent's documented port (EDGELOOP_EDGE_HTTP_PORT)
NODE_GROUP_SERVER_PORT = 8601  # as in docs/deployer.md's LOCAL_NODE_GROUP_SERVERS example
# The demo's agent: a hard example waits up to 1 s for the cloud (two model servers share the CPUs here), the
# uplink retries at least every second, and a failed cloud call sends hard examples to the edge for 2 s.
EDGE_AGENT_SETTINGS: Mapping[str, Any] = {"joint_budget_ms": 1000.0, "uplink_retry_max_s": 1.0, "link_retry_s": 2.0}
STATUS_POLL_S = 0.25
DRAIN_TIMEOUT_S = 120.0

Echo = Callable[[str], None]


@dataclass(frozen=True)
class EdgeAct:
    """What the edge act does; ``offline_s`` None: no offline moment."""

    site: str
    device: str
    images: Path
    model: str
    rate: float
    count: int | None
    broker: str  # auto | mosquitto | embedded
    offline_s: float | None = None


@dataclass
class EdgeActOutcome:
    """What happened, for the caller (and the tests): each answer's (phase, served_by, version), the backlog."""

    answers: list[tuple[str, str, int | None]] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    missing: int = 0
    backlog_peak: int = 0
    backlog_end: int | None = None
    in_ingest: int = 0
    with_picture: int = 0

    def served_by(self, phase: str | None = None) -> Counter[str]:
        return Counter(by for at, by, _ in self.answers if phase is None or at == phase)


class CloudLink:
    """The edge site's link to the cloud: a TCP relay per cloud service the agent calls (``name -> URL``).

    ``cut()`` refuses new connections and drops those open, as a site whose WAN link is down; ``restore()``
    listens again on the same ports. The agent is given :attr:`urls` (the relays), never the services' own.
    """

    def __init__(self, targets: Mapping[str, str]) -> None:
        self._targets = {name: _host_port(url) for name, url in targets.items()}
        self._ports = {name: any_free_port() for name in targets}
        self._servers: list[asyncio.Server] = []
        self._open: set[asyncio.StreamWriter] = set()
        self.up = False

    @property
    def urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{port}" for name, port in self._ports.items()}

    async def restore(self) -> None:
        if self.up:
            return
        for name, (host, port) in self._targets.items():
            server = await asyncio.start_server(
                _relay_to(host, port, self._open), "127.0.0.1", self._ports[name], reuse_address=True
            )
            self._servers.append(server)
        self.up = True

    async def cut(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._open):
            writer.transport.abort()  # a connection that was open breaks, as on a lost link
        self._open.clear()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()
        self.up = False

    async def close(self) -> None:
        await self.cut()


def _relay_to(host: str, port: int, open_writers: set[asyncio.StreamWriter]) -> Any:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, upstream_writer}
        open_writers.update(pair)
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            open_writers.difference_update(pair)
            for each in pair:
                each.transport.abort()

    return relay


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r} names no host and port")
    return parts.hostname, parts.port


def link_node_group_folder(data_dir: Path, group: str, model_base: Path, model: str) -> tuple[Path, int]:
    """``<data>/node-groups/<group>/<model>/<v>`` linked to the newest version the trainer exported, and no other
    version (what the deployer's local target applies, docs/deployer.md): the group's model base and version."""
    versions = sorted(int(path.name) for path in (model_base / model).iterdir() if path.name.isdigit())
    if not versions:
        raise RuntimeError(f"no version of {model} in {model_base / model}")
    newest = versions[-1]
    group_base = data_dir / "node-groups" / group
    folder = group_base / model
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name.isdigit() and int(entry.name) != newest and (entry.is_symlink() or entry.is_file()):
            entry.unlink()
    link = folder / str(newest)
    if not link.exists():
        if link.is_symlink():  # a dangling link of an earlier run
            link.unlink()
        os.symlink((model_base / model / str(newest)).resolve(), link, target_is_directory=True)
    return group_base, newest


async def run_edge_act(
    system: System,
    act: EdgeAct,
    data_dir: Path,
    stop: asyncio.Event,
    echo: Echo,
    site_stack: contextlib.AsyncExitStack,
) -> EdgeActOutcome:
    """The edge site beside ``system`` (model server, ingest, gateway running), its camera, and the offline
    moment if ``act.offline_s``. The node group's model server and the agent stop with ``system``; the site's
    broker and its link to the cloud with ``site_stack``, which the caller closes after ``system.stop()`` (the
    agent leaves its broker before the broker goes)."""
    assert system.config.model_base is not None
    outcome = EdgeActOutcome()
    echo("")
    echo(f"--- an edge site: {act.site} answers its devices itself, beside the cloud ---")
    broker = await start_local_broker(EDGE_BROKER_PORT, prefer=act.broker)
    site_stack.push_async_callback(broker.stop)
    link = CloudLink({"inference-gateway": system.urls["inference-gateway"], "ingest": system.urls["ingest"]})
    site_stack.push_async_callback(link.close)
    await link.restore()
    group_base, version = link_node_group_folder(data_dir, act.site, system.config.model_base, act.model)
    model_server = await system.start_node_group_model_server(
        act.site, group_base, port=pick_port(NODE_GROUP_SERVER_PORT)
    )
    agent_url = await system.start_edge_agent(
        act.site,
        model_server_url=model_server,
        port=pick_port(EDGE_AGENT_PORT),
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        mqtt_protocol="5" if broker.kind == "mosquitto" else "3.1.1",  # the embedded broker speaks 3.1.1
        cloud_url=link.urls["inference-gateway"],
        ingest_url=link.urls["ingest"],
        **EDGE_AGENT_SETTINGS,
    )
    echo(f"edge:  {act.site}: {broker.kind} broker on {broker.host}:{broker.port}")
    echo(f"edge:  node group {act.site}'s model server {model_server}: {act.model} v{version} ({group_base})")
    echo(
        f"edge:  edge agent {agent_url} (GET /v1/status); hard examples go to the gateway "
        f"{system.urls['inference-gateway']}, records to ingest {system.urls['ingest']} over the site's link"
    )
    async with httpx.AsyncClient(base_url=agent_url, timeout=10.0) as agent:
        site_camera = _SiteCamera(act, broker.host, broker.port, outcome, echo)
        echo(f"camera: {act.device}@{act.site} sends photos from {act.images} to the site's broker")
        summary = await site_camera.run("online", stop, count=act.count, loop=False)
        echo(f"camera: {summary.describe()}")
        if not stop.is_set():
            await _drain(agent, act.site, outcome, stop, echo, timeout_s=DRAIN_TIMEOUT_S)
        if act.offline_s is not None and not stop.is_set():
            await _offline_moment(act, agent, link, site_camera, outcome, stop, echo)
    await _count_in_ingest(system, act.site, outcome, echo)
    return outcome


class _SiteCamera:
    def __init__(self, act: EdgeAct, host: str, port: int, outcome: EdgeActOutcome, echo: Echo) -> None:
        self.act, self.host, self.port, self.outcome, self.echo = act, host, port, outcome, echo
        self.phase = "online"

    async def run(self, phase: str, stop: asyncio.Event, *, count: int | None, loop: bool) -> SimulationSummary:
        self.phase = phase
        simulator = DeviceSimulator(
            SimulatorConfig(
                images_dir=self.act.images,
                site=self.act.site,
                device=self.act.device,
                rate=self.act.rate,
                count=count,
                loop=loop,
                mqtt_host=self.host,
                mqtt_port=self.port,
            ),
            on_result=self._on_result,
        )
        camera = asyncio.create_task(simulator.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({camera, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not camera.done():
            simulator.stop()
        stopper.cancel()
        summary = await camera
        self.outcome.missing += summary.missing
        return summary

    def _on_result(self, result: DeviceResult) -> None:
        served_by = str(result.payload.get("served_by") or "?")
        self.outcome.answers.append((self.phase, served_by, result.model_version))
        sample_id = result.payload.get("sample_id")
        if isinstance(sample_id, str):
            self.outcome.sample_ids.append(sample_id)
        self.echo(f"result: {format_result(result)}  served by {served_by} at {self.act.site}")


async def _status(agent: httpx.AsyncClient) -> dict[str, Any]:
    response = await agent.get("/v1/status")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _backlog(status: Mapping[str, Any]) -> int:
    return int(status["uplink"]["queued_records"])


def _link_words(status: Mapping[str, Any]) -> str:
    uplink = status["uplink"]
    return "link up" if uplink["link_up"] else f"link down: {uplink['last_error'] or 'not yet tried'}"


async def _drain(
    agent: httpx.AsyncClient, site: str, outcome: EdgeActOutcome, stop: asyncio.Event, echo: Echo, *, timeout_s: float
) -> float:
    """Wait until the agent's uplink queue is empty (every record answered and forwarded), printing the backlog as
    it shrinks; returns the seconds it took."""
    started = time.monotonic()
    shown: int | None = None
    while True:
        status = await _status(agent)
        backlog = _backlog(status)
        outcome.backlog_end = backlog
        if backlog == 0 and status["uplink"]["unanswered"] == 0 and status["pictures_waiting"] == 0:
            took = time.monotonic() - started
            echo(f"uplink: backlog 0 at {site}: every record is at ingest ({_link_words(status)}; {took:.1f} s)")
            return took
        if backlog != shown and shown is not None:
            echo(f"uplink: backlog {backlog} records at {site}, draining ({_link_words(status)})")
        shown = backlog
        if stop.is_set():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the uplink backlog of {site} is still {backlog} after {timeout_s:.0f}s")
        await asyncio.sleep(STATUS_POLL_S)


async def _offline_moment(
    act: EdgeAct,
    agent: httpx.AsyncClient,
    link: CloudLink,
    camera: _SiteCamera,
    outcome: EdgeActOutcome,
    stop: asyncio.Event,
    echo: Echo,
) -> None:
    assert act.offline_s is not None
    echo("")
    echo(f"--- offline: the cloud is cut off from {act.site} for {act.offline_s:g} s ---")
    await link.cut()
    cut_at = time.monotonic()
    # The agent's "uplink paused" warning says what the lines below say; the demo prints the link's state itself.
    logging.getLogger("edgeloop_edge.uplink").setLevel(logging.ERROR)
    echo(f"cloud: DOWN for {act.site}: ingest and the gateway are unreachable from the site (its link is cut)")
    # The camera keeps sending at its rate for the offline time (or --count photos); the backlog grows.
    count = act.count if act.count is not None else max(1, round(act.rate * act.offline_s))
    watcher = asyncio.create_task(_watch_backlog(agent, act.site, outcome, echo))
    try:
        summary = await camera.run("offline", stop, count=count, loop=True)
    finally:
        watcher.cancel()  # the line below says where the backlog stands once the camera is done
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    echo(f"camera: {summary.describe()}")
    left = act.offline_s - (time.monotonic() - cut_at)
    if left > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), left)
    await asyncio.sleep(2 * STATUS_POLL_S)  # the last answers' records are queued just after the device has them
    status = await _status(agent)
    backlog = _backlog(status)
    outcome.backlog_peak = max(outcome.backlog_peak, backlog)
    echo(f"uplink: backlog {backlog} records at {act.site} while the cloud was away ({_link_words(status)})")
    await link.restore()
    echo(f"cloud: back for {act.site} after {time.monotonic() - cut_at:.1f} s; the uplink drains the backlog in order")
    if not stop.is_set():
        await _drain(agent, act.site, outcome, stop, echo, timeout_s=DRAIN_TIMEOUT_S)


async def _watch_backlog(agent: httpx.AsyncClient, site: str, outcome: EdgeActOutcome, echo: Echo) -> None:
    """While the link is cut: print the backlog each time it grows."""
    shown = 0  # drained before the cut
    while True:
        with contextlib.suppress(httpx.HTTPError):
            status = await _status(agent)
            backlog = _backlog(status)
            outcome.backlog_peak = max(outcome.backlog_peak, backlog)
            if backlog > shown:
                echo(f"uplink: backlog {backlog} records at {site} ({_link_words(status)})")
                shown = backlog
        await asyncio.sleep(4 * STATUS_POLL_S)


async def _count_in_ingest(system: System, site: str, outcome: EdgeActOutcome, echo: Echo) -> None:
    """Ask ingest for every record the site answered (``GET /v1/uplink/{record_id}``)."""
    async with httpx.AsyncClient(base_url=system.urls["ingest"], timeout=10.0) as ingest:
        for record_id in outcome.sample_ids:
            response = await ingest.get(f"/v1/uplink/{record_id}")
            if response.status_code == 200:
                outcome.in_ingest += 1
                outcome.with_picture += bool(response.json().get("image_included"))
    served = ", ".join(f"{count} by {by}" for by, count in sorted(outcome.served_by().items()))
    echo(
        f"ingest: holds {outcome.in_ingest} of the {len(outcome.sample_ids)} records {site} answered ({served}); "
        f"{outcome.with_picture} with their picture (the others name it edge://{site}/sha256/...)"
    )
