"""Starting the control plane's processes in the background and stopping them by pid.

A process is "ours" when its pid file names a live process whose command line
contains this checkout's ``.edgeloop/kube`` path (every component is given files
from there), so a recycled pid, or another checkout's control plane, is never stopped.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import psutil

# Popen objects of the processes this Python process started: kept so they are
# neither garbage-collected (ResourceWarning) nor left as zombies after a stop.
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: list[str], *, log_file: Path, pid_file: Path, cwd: Path, env: dict[str, str]) -> int:
    """Start argv in its own session, output appended to log_file; write its pid to pid_file."""
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
            start_new_session=True,  # Ctrl-C in the terminal that ran `kube up` must not reach the servers
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
    """The live process pid_file names, if its command line contains marker; else None."""
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
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def terminate(process: psutil.Process, timeout: float = 20.0) -> str:
    """SIGTERM, wait, then SIGKILL. Returns "stopped" or "killed"."""
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        try:
            process.kill()
            process.wait(10)
        except psutil.NoSuchProcess:
            pass
        _reap(process.pid)
        return "killed"
    _reap(process.pid)
    return "stopped"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, taken: set[int], host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else a free port the kernel picks; never one in ``taken``."""
    if preferred not in taken and port_free(preferred, host):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        child.poll()
