"""The Python API of ``edgeloop infra``, for the CLI and for tests that stop and start a server.

    from edgeloop import infra
    infra.stop("kafka")     # returns once the broker has exited
    infra.start("kafka")    # returns once it answers on 127.0.0.1:9092 (topics ensured)
    infra.status()          # [ComponentStatus(name="kafka", state="running", pid=..., ...), ...]

Every call takes a lock file under ``.edgeloop/`` so that two ``up``/``down``
runs (two terminals, a test and a terminal) do not interleave.
"""

from __future__ import annotations

import asyncio
import fcntl
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from edgeloop.infra.component import Component, ComponentStatus, Launch
from edgeloop.infra.errors import InfraError
from edgeloop.infra.kafka import Kafka
from edgeloop.infra.mosquitto import Mosquitto
from edgeloop.infra.mqtts import SecureMosquitto
from edgeloop.infra.packages import ensure_installed, ensure_test_tools
from edgeloop.infra.postgres import Postgres
from edgeloop.infra.seaweedfs import SeaweedFS
from edgeloop.infra.secure import SecureLinks
from edgeloop.paths import repo_root, state_dir

Echo = Callable[[str], None]

# Start order; `down` goes the other way. Kafka first: it boots longest, the others boot meanwhile.
# SeaweedFS last: a first start builds `weed` (minutes), while the others boot.
COMPONENT_TYPES: dict[str, type[Component]] = {
    "kafka": Kafka,
    "mosquitto": Mosquitto,
    "postgres": Postgres,
    "seaweedfs": SeaweedFS,
}
ALIASES = {"mqtt": "mosquitto", "postgresql": "postgres", "pg": "postgres", "s3": "seaweedfs"}
COMPONENTS: tuple[str, ...] = tuple(COMPONENT_TYPES)
# Started only in secure mode (`up --secure`, remembered), after the others: the secured broker beside the shared
# anonymous one (edgeloop.infra.mqtts).
SECURE_COMPONENT_TYPES: dict[str, type[Component]] = {"mqtts": SecureMosquitto}

_lock = threading.RLock()
_lock_depth = 0


def _print(line: str) -> None:
    print(line, flush=True)


def component(name: str) -> Component:
    """The component called name (or an alias: mqtt, postgresql), bound to this checkout's ``.edgeloop/``; with
    its TLS listener once ``up(secure=True)`` made the secure material (remembered: edgeloop.infra.secure)."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    types = COMPONENT_TYPES | SECURE_COMPONENT_TYPES
    if key not in types:
        raise InfraError(f"unknown component {name!r}; choose from {', '.join(types)}")
    links = SecureLinks(state_dir())
    return types[key](state_dir(), repo_root(), secure=links if links.enabled() else None)


def select(names: Iterable[str] | None) -> list[Component]:
    """Components in start order; all of them when names is None or empty."""
    secure = SecureLinks(state_dir()).enabled()
    every = COMPONENTS + (tuple(SECURE_COMPONENT_TYPES) if secure else ())
    wanted = {component(name).name for name in names} if names else set(every)
    return [component(name) for name in every if name in wanted]


def start(name: str, *, echo: Echo = _print) -> ComponentStatus:
    """Start one component (installing what it lacks) unless ours already runs; returns when it answers."""
    with _exclusive():
        server = component(name)
        ensure_installed(server.requirements(), echo)
        server.start(echo)
        return server.status()


def stop(name: str, *, echo: Echo = _print) -> bool:
    """Stop one component by its pid file (never a process we did not start). True if it was running."""
    with _exclusive():
        return component(name).stop(echo)


def restart(name: str, *, echo: Echo = _print) -> ComponentStatus:
    with _exclusive():
        stop(name, echo=echo)
        return start(name, echo=echo)


def status(names: Iterable[str] | None = None) -> list[ComponentStatus]:
    """What runs where, without changing anything."""
    return [server.status() for server in select(names)]


def up(names: Iterable[str] | None = None, *, secure: bool = False, echo: Echo = _print) -> list[ComponentStatus]:
    """Install and start every component (or those named) that is not running; servers boot side by side.

    ``secure``: make the local CA, certificates and passwords (once) so that Kafka and PostgreSQL also serve TLS
    with credentials, from now on (docs/security.md); then write ``.edgeloop/secure/secure.env``.
    A component that fails does not stop the others; InfraError lists every failure at the end.
    """
    with _exclusive():
        links = SecureLinks(state_dir())
        if secure:
            links.ensure(echo)
        servers = select(names)
        ensure_installed([req for server in servers for req in server.requirements()], echo)
        if not names:  # the whole local infrastructure, as `make test` asks: the browser tests' Chromium too
            ensure_test_tools(echo)
        failures: list[str] = []
        launches: list[tuple[Component, Launch]] = []
        for server in servers:
            try:
                launches.append((server, server.launch(echo)))
            except InfraError as exc:
                failures.append(str(exc))
        for server, launch in reversed(launches):  # the quick ones first; Kafka boots meanwhile
            try:
                server.finish(launch, echo)
            except InfraError as exc:
                failures.append(str(exc))
        if failures:
            raise InfraError("\n".join(failures))
        if links.enabled():
            _write_secure_client_files(links, echo)
        return [server.status() for server in servers]


def secure_client_environment() -> dict[str, str] | None:
    """The ``EDGELOOP_*`` settings of a client of the secure listeners of this state dir's Kafka and PostgreSQL,
    when both run with them (``infra up --secure``); None otherwise."""
    links = SecureLinks(state_dir())
    if not links.enabled():
        return None
    kafka, postgres = component("kafka"), component("postgres")
    if not (kafka.runs_secure() and postgres.runs_secure()):
        return None
    return links.read_client_environment() or None


def _write_secure_client_files(links: SecureLinks, echo: Echo) -> None:
    kafka, postgres = component("kafka"), component("postgres")
    assert isinstance(kafka, Kafka)
    environment = links.client_environment(
        kafka_address=kafka.secure_address, postgres_host=postgres.host, postgres_port=postgres.port
    )
    mqtts = component("mqtts")
    if isinstance(mqtts, SecureMosquitto) and mqtts.running_process() is not None:
        environment |= mqtts.client_environment()
        echo(f"secure: MQTT over TLS on {mqtts.address} (identities' passwords in {mqtts.passwords_dir})")
    links.write_client_files(environment)
    if not (kafka.runs_secure() and postgres.runs_secure()):
        return
    echo(f"secure: Kafka SASL_SSL on {kafka.secure_address}, PostgreSQL TLS on {postgres.address}; services use:")
    echo(f"  set -a; . {links.env_file}; set +a      (kcat: kcat -F {links.kcat_file} -L)")


def down(names: Iterable[str] | None = None, *, echo: Echo = _print) -> list[str]:
    """Stop what ``up`` started (by pid file), in reverse order. Returns the components that were running."""
    with _exclusive():
        return [server.name for server in reversed(select(names)) if server.stop(echo)]


async def start_async(name: str, *, echo: Echo = _print) -> ComponentStatus:
    """:func:`start` from async code, without blocking the caller's event loop."""
    return await asyncio.to_thread(start, name, echo=echo)


async def stop_async(name: str, *, echo: Echo = _print) -> bool:
    """:func:`stop` from async code, without blocking the caller's event loop."""
    return await asyncio.to_thread(stop, name, echo=echo)


@contextmanager
def _exclusive() -> Iterator[None]:
    """Hold ``.edgeloop/run/infra.lock`` (re-entrant within this process)."""
    global _lock_depth
    with _lock:
        if _lock_depth:
            _lock_depth += 1
            try:
                yield
            finally:
                _lock_depth -= 1
            return
        lock_path = state_dir() / "run" / "infra.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            _lock_depth = 1
            try:
                yield
            finally:
                _lock_depth = 0
                fcntl.flock(lock_file, fcntl.LOCK_UN)
