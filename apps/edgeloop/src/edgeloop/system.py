"""The EdgeLoop system in one process: the one place that wires the services together.

Each service is its own FastAPI app, built by its ``create_app(settings, bus=...)``, served by uvicorn on the
caller's event loop; the model server runs on a thread of its own (its inference would otherwise hold up the
loop every service shares). What connects the services — each one's URL in the settings of those that call it,
the model's name and base path, the topic prefix — is filled in here, once; everything else a caller wants of a
service is an override of that service's settings.

Used by ``edgeloop demo`` (both acts, standalone: one in-process bus, SQLite, local folders), by the distributed
end-to-end test (no shared bus: each service builds its own Kafka bus, as separate processes would) and by the
benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from edgeloop_common.bus.base import EventBus
from edgeloop_common.settings import CommonSettings

from edgeloop.processes import any_free_port, pick_port

MODEL_SERVER = "model-server"
# An edge site's agent (services/edge); not one of SERVICES: one runs per edge site (``start_edge_agent``).
EDGE = "edge"
# The web console (services/console): reads and asks the other services over HTTP; started by whoever wants it.
CONSOLE = "console"
# The federated service (services/federated): retrains the failure model across sites with Flower; not one of
# SERVICES (only the telemetry demo and whoever wants it start it: it opens a Flower server for each training).
FEDERATED = "federated"
# The HTTP services in the order they start: each after the ones it calls (drift and the trainer call the
# registry, the trainer calls ingest).
SERVICES: tuple[str, ...] = ("registry", "ingest", "inference-gateway", "drift", "trainer", "deployer")
# The ports the README and `edgeloop <service>` document; the demo takes them when they are free.
DOCUMENTED_PORTS: Mapping[str, int] = {
    "ingest": 8081,
    "inference-gateway": 8082,
    "registry": 8083,
    "trainer": 8084,
    "drift": 8085,
    "deployer": 8086,
    FEDERATED: 8088,
    CONSOLE: 8080,
    MODEL_SERVER: 8501,
    f"{MODEL_SERVER}-grpc": 8500,
}
_PACKAGES: Mapping[str, str] = {
    "registry": "edgeloop_registry",
    "ingest": "edgeloop_ingest",
    "inference-gateway": "edgeloop_inference_gateway",
    "drift": "edgeloop_drift",
    "trainer": "edgeloop_trainer",
    "deployer": "edgeloop_deployer",
    MODEL_SERVER: "edgeloop_model_server",
    EDGE: "edgeloop_edge",
    CONSOLE: "edgeloop_console",
    FEDERATED: "edgeloop_federated",
}
# The services whose app takes no event bus: the edge talks to the cloud over HTTPS only (docs/edge.md).
_WITHOUT_BUS: frozenset[str] = frozenset({EDGE, CONSOLE})


class EmbeddedServer:
    """A uvicorn server on the caller's event loop that leaves signals to the caller (several share one loop)."""

    def __init__(self, name: str, app: Any, host: str, port: int) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.name = name
        self.url = f"http://{host}:{port}"
        self.server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        self.task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 120.0) -> None:
        self.task = asyncio.create_task(self.server.serve(), name=f"edgeloop:{self.name}")
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises what stopped it
                raise RuntimeError(f"{self.name} stopped while starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start in {timeout_s:.0f}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, timeout=15)


async def wait_ready(url: str, what: str, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; a TimeoutError names the last answer."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
            await asyncio.sleep(0.25)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s ({last})")


@dataclass(frozen=True)
class SystemConfig:
    """What differs between the demo, the distributed test and a benchmark; the wiring itself does not."""

    model_name: str | None = None  # None: each service's own setting (its environment)
    model_base: Path | None = None  # where the trainer exports and the model server loads versions
    # The shared settings of one service ("registry", ..., "model-server"); None: read from the environment.
    common: Callable[[str], CommonSettings] | None = None
    bus: EventBus | None = None  # one bus for all (standalone); None: each service builds its own (Kafka)
    topic_prefix: str | None = None
    ports: Mapping[str, int] = field(default_factory=dict)  # wanted ports, taken if free; others: any free port
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per service, over the wiring
    ready_timeout_s: float = 120.0


@dataclass
class System:
    """Start the services named, in order; each ready (``/readyz``) before the next starts."""

    config: SystemConfig
    urls: dict[str, str] = field(default_factory=dict)
    _servers: list[EmbeddedServer] = field(default_factory=list)
    _threads: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    # -- settings ---------------------------------------------------------------------------------------------

    def settings_for(self, service: str, **overrides: Any) -> Any:
        """The service's settings: the wiring to what is running, then the config's settings, then ``overrides``."""
        settings_cls = importlib.import_module(f"{_PACKAGES[service]}.settings").Settings
        values: dict[str, Any] = {}
        if self.config.common is not None:
            values["common"] = self.config.common(service)
        if self.config.topic_prefix is not None and "common" in settings_cls.model_fields:
            common = values.get("common") or settings_cls.model_fields["common"].get_default(call_default_factory=True)
            values["common"] = common.model_copy(update={"topic_prefix": self.config.topic_prefix})
        values.update(self._wiring(service))
        values.update(self.config.settings.get(service, {}))
        values.update(overrides)
        return settings_cls(**values)

    def _wiring(self, service: str) -> dict[str, Any]:
        """What ``service`` needs to know of the others (only of those this system runs)."""
        urls, model_name, model_base = self.urls, self.config.model_name, self.config.model_base
        wiring: dict[str, Any] = {}
        if service == MODEL_SERVER:
            wiring = {"model_version_policy": "all", "poll_interval_s": 0.3}  # the gateway routes versions per site
            wiring |= _given(model_name=model_name, model_base_path=model_base)
        elif service == "ingest":
            wiring = {"mqtt_client_id": f"edgeloop-ingest-{uuid.uuid4().hex[:8]}"}  # one session per run
        elif service == "inference-gateway":
            # The registry gives each failure-model version's alert threshold.
            wiring = {"metadata_refresh_s": 0.5} | _given(model_name=model_name, registry_url=urls.get("registry"))
            if MODEL_SERVER in urls:
                wiring |= {"model_server_rest_url": urls[MODEL_SERVER], "model_server_grpc_target": urls["grpc"]}
        elif service == "drift":
            wiring = _given(registry_url=urls.get("registry"))
        elif service == "trainer":
            wiring = _given(registry_url=urls.get("registry"), ingest_url=urls.get("ingest"), models=model_name)
            wiring |= _given(model_base=model_base)
        elif service == FEDERATED:  # it exports versions where the model server loads them, registers them
            wiring = _given(registry_url=urls.get("registry"), model_base=model_base)
        elif service == "deployer":
            wiring = _given(model_server_url=urls.get(MODEL_SERVER))  # the local target's model server
        elif service == EDGE:  # the deep model is the cloud gateway's; the uplink goes to ingest
            wiring = _given(
                model_name=model_name, cloud_url=urls.get("inference-gateway"), ingest_url=urls.get("ingest")
            )
        elif service == CONSOLE:  # it shows what the services running here say
            shown = ("ingest", "registry", "trainer", "drift", "deployer")
            wiring = _given(model_name=model_name) | {f"{name}_url": urls[name] for name in shown if name in urls}
        return wiring

    # -- start and stop ---------------------------------------------------------------------------------------

    async def start_model_server(self) -> None:
        if MODEL_SERVER not in self.urls:
            await asyncio.to_thread(self._start_model_server)

    async def start(self, services: Iterable[str] = SERVICES, *, wait_for_model: bool = True) -> None:
        """Start ``services`` (those not running yet), in the order given.

        ``wait_for_model``: the gateway is ready only once the model server has a version of the model; before
        the first training there is none, and the gateway is waited for only until it is alive.
        """
        for service in services:
            if service == MODEL_SERVER:
                await self.start_model_server()
            elif service not in self.urls:
                await self._serve(service, wait_for_model=wait_for_model)

    async def stop(self) -> None:
        for server in reversed(self._servers):
            await server.stop()
        self._servers.clear()
        await asyncio.to_thread(self._threads.close)
        self.urls.clear()

    async def __aenter__(self) -> System:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def app_of(self, service: str, settings: Any) -> Any:
        create_app = importlib.import_module(f"{_PACKAGES[service]}.app").create_app
        if self.config.bus is None or service in _WITHOUT_BUS:
            return create_app(settings)
        return create_app(settings, bus=self.config.bus)

    async def _serve(self, service: str, *, wait_for_model: bool) -> None:
        port = self._port(service)
        settings = self.settings_for(service, http_host="127.0.0.1", http_port=port)
        server = EmbeddedServer(service, self.app_of(service, settings), "127.0.0.1", port)
        await server.start()
        self._servers.append(server)
        self.urls[service] = server.url
        probe = "/healthz" if service == "inference-gateway" and not wait_for_model else "/readyz"
        await wait_ready(f"{server.url}{probe}", service, timeout_s=self.config.ready_timeout_s)

    def _start_model_server(self) -> None:
        from edgeloop_model_server.embedded import serve_in_thread

        if self.config.model_base is not None and self.config.model_name is not None:
            (self.config.model_base / self.config.model_name).mkdir(parents=True, exist_ok=True)
        settings = self.settings_for(
            MODEL_SERVER,
            http_host="127.0.0.1",
            http_port=self._port(MODEL_SERVER),
            grpc_host="127.0.0.1",
            grpc_port=self._port(f"{MODEL_SERVER}-grpc"),
        )
        running = self._threads.enter_context(serve_in_thread(settings))
        self.urls[MODEL_SERVER] = running.rest_url
        self.urls["grpc"] = running.grpc_target

    # -- edge sites -------------------------------------------------------------------------------------------

    async def start_node_group_model_server(self, group: str, model_base: Path, *, port: int | None = None) -> str:
        """A node group's own model server (standalone, as the deployer's ``LOCAL_NODE_GROUP_SERVERS``): the lite
        server on a thread, serving the newest version in ``model_base/<model>/`` (docs/deployer.md, the folder
        ``<data>/node-groups/<group>``). Returns its REST URL, also ``urls["model-server:<group>"]``."""
        return await asyncio.to_thread(self._start_node_group_model_server, group, model_base, port)

    def _start_node_group_model_server(self, group: str, model_base: Path, port: int | None) -> str:
        from edgeloop_model_server.embedded import serve_in_thread

        key = f"{MODEL_SERVER}:{group}"
        settings = self.settings_for(
            MODEL_SERVER,
            model_base_path=model_base,
            model_version_policy="latest:1",  # what the deployer linked into the group's folder last
            http_host="127.0.0.1",
            http_port=port or self._port(key),
            grpc_host="127.0.0.1",
            grpc_port=self._port(f"{key}-grpc"),
        )
        running = self._threads.enter_context(serve_in_thread(settings))
        self.urls[key] = running.rest_url
        self.urls[f"grpc:{group}"] = running.grpc_target
        return self.urls[key]

    async def start_edge_agent(
        self, site: str, *, model_server_url: str, port: int | None = None, **overrides: Any
    ) -> str:
        """The edge agent of ``site`` (services/edge) beside the services running here: it answers the site's
        devices with the node group's model server at ``model_server_url``; its cloud links are the gateway and
        ingest of this system unless ``overrides`` name others (``cloud_url``, ``ingest_url``), and the site's
        broker is ``mqtt_host``/``mqtt_port`` of the overrides (else the common settings'). Ready (its broker
        and model server answer) when this returns; its URL, also ``urls["edge:<site>"]``."""
        key = f"{EDGE}:{site}"
        port = port or self._port(key)
        settings = self.settings_for(
            EDGE, site=site, model_server_url=model_server_url, http_host="127.0.0.1", http_port=port, **overrides
        )
        server = EmbeddedServer(key, self.app_of(EDGE, settings), "127.0.0.1", port)
        await server.start()
        self._servers.append(server)
        self.urls[key] = server.url
        await wait_ready(f"{server.url}/readyz", key, timeout_s=self.config.ready_timeout_s)
        return server.url

    def _port(self, name: str) -> int:
        wanted = self.config.ports.get(name)
        return pick_port(wanted) if wanted else any_free_port()

    # -- HTTP helpers -----------------------------------------------------------------------------------------

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.urls[service], timeout=30.0) as client:
            return await client.request(method, path, **kwargs)

    async def json(self, service: str, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
        response = await self.call(service, method, path, **kwargs)
        if response.status_code != expect:
            raise AssertionError(f"{service} {method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json()


def _given(**values: Any) -> dict[str, Any]:
    """The values that are set: a setting the system does not know stays the service's own (its environment)."""
    return {name: value for name, value in values.items() if value is not None}
