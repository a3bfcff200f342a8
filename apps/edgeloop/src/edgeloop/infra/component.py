"""What every local server has in common: its files under ``.edgeloop/``, start, readiness, stop, status.

A component starts in two steps so that ``infra up`` can boot the servers side
by side: :meth:`Component.launch` (install what is missing, prepare the data
dir, spawn the process) and :meth:`Component.finish` (wait until it answers,
then create what it must hold: topics, a database).
"""

from __future__ import annotations

import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from string import Template
from typing import ClassVar

import psutil

from edgeloop import processes
from edgeloop.infra import process
from edgeloop.infra.errors import InfraError
from edgeloop.infra.packages import Requirement
from edgeloop.infra.secure import SecureLinks

Echo = Callable[[str], None]

LOG_ROTATE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class ComponentStatus:
    """One line of ``edgeloop infra status``."""

    name: str
    state: str  # "running", "stopped", "foreign" (port held by a process we did not start), "not answering"
    address: str
    pid: int | None
    rss_bytes: int | None
    data_dir: Path
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Launch:
    """A component on its way up: the pid and when it was spawned (already_running: nothing was spawned)."""

    pid: int
    started_at: float
    already_running: bool


class Component(ABC):
    name: ClassVar[str]
    host: ClassVar[str] = "127.0.0.1"
    port: int  # the class's default; EDGELOOP_INFRA_<NAME>_PORT moves it (a second stack beside the shared one)
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_timeout_s: ClassVar[float] = 30.0
    ready_timeout_s: ClassVar[float] = 90.0

    def __init__(self, state_dir: Path, repo_root: Path, *, secure: SecureLinks | None = None) -> None:
        self.state_dir = state_dir
        self.repo_root = repo_root
        self.port = port_setting(self.name, "port", type(self).port)
        # Set: the server also serves TLS with credentials (`edgeloop infra up --secure`, edgeloop.infra.secure).
        self.secure = secure

    # -- files -----------------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """Everything this component keeps: config, data, sockets."""
        return self.state_dir / self.name

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the server binds (each must be free before it starts)."""
        return (self.port,)

    @property
    def marker(self) -> str:
        """A string in the command line of our server and of no other: a path under our home."""
        return f"{self.home}/"

    # -- what each component defines -------------------------------------------------------------

    @abstractmethod
    def requirements(self) -> list[Requirement]:
        """Programs (and their Debian packages) this component needs."""

    @abstractmethod
    def prepare(self, echo: Echo) -> None:
        """Everything before the first start that is not there yet: jars, data dir, config."""

    @abstractmethod
    def command(self) -> list[str]:
        """The server's command line; it runs in the foreground (we own the process)."""

    @abstractmethod
    def answers(self) -> bool:
        """Whether the server is ready for clients (called repeatedly while it starts)."""

    def provision(self, echo: Echo) -> None:  # noqa: B027 - most components have nothing to create
        """Create what must exist on a running server (idempotent): topics, roles, databases."""

    def run_as(self) -> str | None:
        """The user the server runs as; None for the current user."""
        return None

    def connection_hint(self) -> str:
        """How clients reach it, printed after the status table."""
        return self.address

    def runs_secure(self) -> bool:
        """Whether our running server was started with its TLS listener (False for a component without one)."""
        return False

    # -- lifecycle ---------------------------------------------------------------------------------

    def running_process(self) -> psutil.Process | None:
        """Our running server, or None."""
        return processes.owned_process(self.pid_file, self.marker)

    def launch(self, echo: Echo) -> Launch:
        running = self.running_process()
        if running is not None:
            echo(f"{self.name}: already running (pid {running.pid})")
            if self.secure is not None and not self.runs_secure():
                # Not restarted behind the back of whoever uses it: they choose when.
                echo(
                    f"{self.name}: it was started without TLS; to add it: `edgeloop infra down --only {self.name}` "
                    "then `edgeloop infra up --secure`"
                )
            return Launch(running.pid, time.monotonic(), already_running=True)
        self._forget_stale_pid_file(echo)
        self._refuse_foreign_ports()
        started_at = time.monotonic()
        self.prepare(echo)
        command = self.command()
        self._rotate_log()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a") as log:
            log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} edgeloop infra: {' '.join(command)}\n")
        pid = processes.spawn(
            command, log_file=self.log_file, pid_file=self.pid_file, user=self.run_as(), cwd=self.home
        )
        echo(f"{self.name}: starting (pid {pid}, log {self._shown(self.log_file)})")
        return Launch(pid, started_at, already_running=False)

    def finish(self, launch: Launch, echo: Echo) -> None:
        self._wait_until_ready(launch.pid)  # also for one already running: it may still be booting
        self.provision(echo)
        if not launch.already_running:
            elapsed = time.monotonic() - launch.started_at
            echo(f"{self.name}: ready on {self.address} in {elapsed:.1f}s (pid {launch.pid})")

    def start(self, echo: Echo) -> None:
        self.finish(self.launch(echo), echo)

    def stop(self, echo: Echo) -> bool:
        """Stop our server (by its pid file; never anything else). True if one was running."""
        running = self.running_process()
        if running is None:
            self._forget_stale_pid_file(echo)
            foreign = self._foreign_holder()
            left_alone = f" (edgeloop did not start {foreign.describe()}: left alone)" if foreign else ""
            echo(f"{self.name}: not running{left_alone}")
            return False
        echo(f"{self.name}: stopping (pid {running.pid})...")
        started_at = time.monotonic()
        try:
            outcome = processes.terminate(running, self.stop_signal, self.stop_timeout_s)
        except psutil.AccessDenied as exc:
            raise InfraError(f"{self.name}: not allowed to stop pid {running.pid} (it was started as root?)") from exc
        self.pid_file.unlink(missing_ok=True)
        if outcome == "killed":
            echo(f"{self.name}: did not stop within {self.stop_timeout_s:.0f}s of {self.stop_signal.name}; killed")
        else:
            echo(f"{self.name}: stopped in {time.monotonic() - started_at:.1f}s")
        return True

    def status(self) -> ComponentStatus:
        running = self.running_process()
        if running is None:
            foreign = self._foreign_holder()
            if foreign is not None:
                return self._status("foreign", foreign.pid, None, f"port held by {foreign.describe()}")
            return self._status("stopped", None, None)
        try:
            rss: int | None = running.memory_info().rss
        except psutil.NoSuchProcess:
            return self._status("stopped", None, None)
        state = "running" if process.port_open(self.host, self.port) else "not answering"
        return self._status(state, running.pid, rss)

    # -- helpers ----------------------------------------------------------------------------------

    def render(self, template: Path, target: Path, **values: object) -> None:
        """Fill a config template from infra/ (``${name}`` placeholders) into target."""
        text = Template(template.read_text()).substitute({key: str(value) for key, value in values.items()})
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def _status(self, state: str, pid: int | None, rss: int | None, detail: str = "") -> ComponentStatus:
        return ComponentStatus(self.name, state, self.address, pid, rss, self.data_dir, detail)

    def _wait_until_ready(self, pid: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if processes.exited(pid):
                self.pid_file.unlink(missing_ok=True)
                raise InfraError(
                    f"{self.name}: exited while starting; the end of {self._shown(self.log_file)}:\n{self.log_tail()}"
                )
            if self.answers():
                self._check_listener_is(pid)
                return
            time.sleep(0.25)
        raise InfraError(
            f"{self.name}: pid {pid} is running but did not answer on {self.address} within "
            f"{self.ready_timeout_s:.0f}s; see {self._shown(self.log_file)} (`edgeloop infra down` stops it)"
        )

    def _check_listener_is(self, pid: int) -> None:
        """What answered must be our server, not something that took the port meanwhile."""
        holder = process.port_holder(self.port)
        if holder.pid is not None and holder.pid != pid:
            raise InfraError(
                f"{self.name}: {self.address} is answered by {holder.describe()}, not by our server (pid {pid}); "
                f"see {self._shown(self.log_file)}"
            )

    def _foreign_holder(self) -> process.PortHolder | None:
        for port in self.ports:
            if process.port_open(self.host, port):
                return process.port_holder(port)
        return None

    def _refuse_foreign_ports(self) -> None:
        holder = self._foreign_holder()
        if holder is not None:
            raise InfraError(
                f"{self.name}: a port it needs is already served by {holder.describe()}, which edgeloop (from "
                f"{self.repo_root}) did not start; leaving it alone. {self._foreign_hint(holder)}"
            )

    def _foreign_hint(self, holder: process.PortHolder) -> str:
        return "Stop that process or free the port, then run `edgeloop infra up` again."

    def _forget_stale_pid_file(self, echo: Echo) -> None:
        pid = processes.read_pid(self.pid_file)
        if pid is not None and self.running_process() is None:
            echo(f"{self.name}: removing stale pid file (pid {pid} is not an edgeloop {self.name})")
            self.pid_file.unlink(missing_ok=True)

    def _rotate_log(self) -> None:
        if self.log_file.exists() and self.log_file.stat().st_size > LOG_ROTATE_BYTES:
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))

    def _shown(self, path: Path) -> str:
        """A path relative to the repository when it is inside it (shorter in messages)."""
        try:
            return str(path.relative_to(self.repo_root))
        except ValueError:
            return str(path)


def port_setting(component: str, which: str, default: int) -> int:
    """``EDGELOOP_INFRA_<COMPONENT>_<WHICH>`` (e.g. EDGELOOP_INFRA_KAFKA_PORT) or the default."""
    variable = f"EDGELOOP_INFRA_{component.upper()}_{which.upper()}"
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise InfraError(f"{variable}={value!r} is not a port number") from exc
