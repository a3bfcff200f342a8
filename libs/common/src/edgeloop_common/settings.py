"""Settings shared by every service, read from ``EDGELOOP_*`` environment variables.

Each service has its own settings class with the prefix ``EDGELOOP_<SERVICE>_``
and holds a :class:`CommonSettings` for what all services share (the bus, the
MQTT broker, the database, the data directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

Mode = Literal["standalone", "distributed"]


class ConfigurationError(ValueError):
    """A service cannot start with its settings (a required one is missing, two disagree): the message says which
    and how to set it. ``edgeloop <service>`` prints it and exits with status 2, without a traceback."""


class CommonSettings(BaseSettings):
    """``EDGELOOP_MODE``, ``EDGELOOP_KAFKA_BOOTSTRAP_SERVERS``, ``EDGELOOP_MQTT_HOST``, ..."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore")

    mode: Mode = "distributed"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Longest a consumer's fetch waits at the broker when nothing is new (edgeloop_common.bus.kafka.FETCH_MAX_WAIT_MS).
    kafka_fetch_max_wait_ms: int = 50
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # PostgreSQL in distributed mode; standalone mode uses SQLite under data_dir.
    database_url: str = "postgresql+psycopg://edgeloop:edgeloop@127.0.0.1:5432/edgeloop"
    data_dir: Path = Path(".edgeloop/data")
    log_level: str = "INFO"
    # Prefix of every Kafka topic and consumer group name: several installations (or test runs) on one cluster.
    # One value for the whole installation, so every service reads it here (EDGELOOP_TOPIC_PREFIX).
    topic_prefix: str = ""

    def resolved_database_url(self, service: str) -> str:
        """The database URL a service should use: SQLite per service in standalone mode."""
        if self.mode == "standalone" and self.database_url.startswith("postgresql"):
            path = (self.data_dir / f"{service}.sqlite3").resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        return self.database_url
