"""The processes ``edgeloop infra`` starts: spawning, recognising our own, stopping, and who holds a port.

A server is "ours" when its pid file names a live process whose command line
contains a path under this checkout's ``.edgeloop/`` (its config or data dir),
so a recycled pid or another checkout's server is never mistaken for ours.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

# Popen objects of the servers this Python process started, kept so they are
# neither garbage-collected (ResourceWarning) nor left as zombies after a stop.
_children: dict[int, subprocess.Popen[bytes]] = {}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class PortHolder:
    """Whoever listens on a port: pid None when this user may not see it."""

    port: int
    pid: int | None
    command: str

    def describe(self) -> str:
        if self.pid is None:
            return f"a process edgeloop cannot see (not running as root?) on port {self.port}"
        return f"pid {self.pid} ({self.command}) on port {self.port}"


def port_holder(port: int) -> PortHolder:
    """The process listening on a TCP port, as far as this user may see it."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return PortHolder(port, None, "")
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return PortHolder(port, conn.pid, describe_command(conn.pid))
    return PortHolder(port, None, "")


def describe_command(pid: int, limit: int = 120) -> str:
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if len(command) <= limit:
        return command
    half = (limit - 5) // 2  # the head names the program, the tail its config (java's main class and file)
    return f"{command[:half]} ... {command[-half:]}"


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def owned_process(pid_file: Path, marker: str) -> psutil.Process | None:
    """The live process named by pid_file, if its command line contains marker; else None."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        if marker not in " ".join(process.cmdline()):
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return process


def spawn(
    argv: list[str],
    *,
    log_file: Path,
    pid_file: Path,
    user: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Start a server in the background, in its own session, output appended to log_file; write pid_file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            user=user,
            group=_primary_group(user) if user else None,
            extra_groups=[] if user else None,  # drop root's supplementary groups too
            start_new_session=True,  # Ctrl-C in the terminal that ran `infra up` must not reach the servers
        )
    _children[process.pid] = process
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


def exited(pid: int) -> bool:
    """Whether a process we spawned has exited (reaping it if it is our child)."""
    if pid in _children:
        return _children[pid].poll() is not None
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)


def terminate(process: psutil.Process, stop_signal: signal.Signals, timeout: float) -> str:
    """Ask a server to stop, wait, then SIGKILL it and its descendants. Returns "stopped" or "killed"."""
    descendants = _descendants(process)
    try:
        process.send_signal(stop_signal)
        process.wait(timeout)
        _reap(process.pid)
        return "stopped"
    except psutil.NoSuchProcess:
        _reap(process.pid)
        return "stopped"
    except psutil.TimeoutExpired:
        pass
    for victim in (process, *descendants):
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs([process, *descendants], timeout=10)
    _reap(process.pid)
    return "killed"


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return children


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        child.poll()


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def running_as_root() -> bool:
    return os.geteuid() == 0
