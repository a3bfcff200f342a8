"""``edgeloop infra``: EdgeLoop's local Kafka, Mosquitto, PostgreSQL and SeaweedFS (see docs/infrastructure.md).

The CLI is :data:`app`; tests use the functions: ``start(name)``, ``stop(name)``,
``restart(name)``, ``status()``, ``up(secure=...)``, ``down()``, ``secure_client_environment()`` and, from async code,
``start_async(name)`` / ``stop_async(name)``. Names: ``kafka``, ``mosquitto``, ``postgres``,
``seaweedfs``.
"""

from edgeloop.infra.api import (
    COMPONENTS,
    down,
    restart,
    secure_client_environment,
    start,
    start_async,
    status,
    stop,
    stop_async,
    up,
)
from edgeloop.infra.cli import app
from edgeloop.infra.component import ComponentStatus
from edgeloop.infra.errors import InfraError
from edgeloop.infra.postgres import DATABASE_URL

__all__ = [
    "COMPONENTS",
    "DATABASE_URL",
    "ComponentStatus",
    "InfraError",
    "app",
    "down",
    "restart",
    "secure_client_environment",
    "start",
    "start_async",
    "status",
    "stop",
    "stop_async",
    "up",
]
