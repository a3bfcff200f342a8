"""``edgeloop infra``: EdgeLoop's local Kafka, Mosquitto and PostgreSQL (see docs/infrastructure.md).

The CLI is :data:`app`; tests use the functions: ``start(name)``, ``stop(name)``,
``restart(name)``, ``status()``, ``up()``, ``down()`` and, from async code,
``start_async(name)`` / ``stop_async(name)``. Names: ``kafka``, ``mosquitto``, ``postgres``.
"""

from edgeloop_cli.infra.api import (
    COMPONENTS,
    down,
    restart,
    start,
    start_async,
    status,
    stop,
    stop_async,
    up,
)
from edgeloop_cli.infra.cli import app
from edgeloop_cli.infra.component import ComponentStatus
from edgeloop_cli.infra.errors import InfraError
from edgeloop_cli.infra.postgres import DATABASE_URL

__all__ = [
    "COMPONENTS",
    "DATABASE_URL",
    "ComponentStatus",
    "InfraError",
    "app",
    "down",
    "restart",
    "start",
    "start_async",
    "status",
    "stop",
    "stop_async",
    "up",
]
