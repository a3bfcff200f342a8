"""Who holds a port, as ``edgeloop infra`` reports it, and whether we run as root.

Starting, recognising and stopping the servers themselves is :mod:`edgeloop.processes`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil


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


def running_as_root() -> bool:
    return os.geteuid() == 0
