"""Background processes the CLI owns (``infra`` servers, ``kube`` control plane): start, recognise, stop; free ports.

A process is "ours" when its pid file names a live process whose command line
contains a marker path under this checkout's ``.edgeloop/`` (every process is
given files from there), so a recycled pid, or another checkout's process, is
never mistaken for ours and never stopped.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Collection
from pathlib import Path

import psutil

# Popen objects of the processes this Python process started, kept so they are
# neither garbage-collected (ResourceWarning) nor left as zombies after a stop.
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    argv: list[str],
    *,
    log_file: Path,
    pid_file: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> int:
    """Start argv in the background, in its own session, output appended to log_file; write its pid to pid_file."""
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
            start_new_session=True,  # Ctrl-C in the terminal that ran `infra up`/`kube up` must not reach them
        )
    _children[process.pid] = process
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


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


def exited(pid: int) -> bool:
    """Whether a process we spawned has exited (reaping it if it is our child)."""
    if pid in _children:
        return _children[pid].poll() is not None
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)


def terminate(process: psutil.Process, stop_signal: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> str:
    """Send stop_signal, wait, then SIGKILL the process and its descendants. Returns "stopped" or "killed"."""
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


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP server could bind host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, taken: Collection[int] = (), host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else a free port the kernel picks; never one in ``taken``."""
    if preferred and preferred not in taken and port_free(preferred, host):
        return preferred
    while True:
        port = any_free_port(host)
        if port not in taken:
            return port


def any_free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel finds free now (another process may still take it before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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
