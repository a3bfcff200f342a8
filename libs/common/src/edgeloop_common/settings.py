"""Settings shared by every service, read from ``EDGELOOP_*`` environment variables.

Each service has its own settings class with the prefix ``EDGELOOP_<SERVICE>_``
and holds a :class:`CommonSettings` for what all services share (the bus, the
MQTT broker, the database, the data directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgeloop_common.mqtt_auth import MqttAuth

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
    # This process's identity on a secured broker (docs/security.md); empty: anonymous (`edgeloop infra up`).
    mqtt_username: str = ""
    mqtt_password: SecretStr = SecretStr("")
    # TLS to the broker: on with mqtt_tls or a CA file (verifies the broker; none: the system's trust store).
    mqtt_tls: bool = False
    mqtt_tls_ca_file: Path | None = None
    # A client certificate instead of (or besides) the password.
    mqtt_tls_cert_file: Path | None = None
    mqtt_tls_key_file: Path | None = None
    # PostgreSQL in distributed mode; standalone mode uses SQLite under data_dir.
    database_url: str = "postgresql+psycopg://edgeloop:edgeloop@127.0.0.1:5432/edgeloop"
    data_dir: Path = Path(".edgeloop/data")
    log_level: str = "INFO"
    # Prefix of every Kafka topic and consumer group name: several installations (or test runs) on one cluster.
    # One value for the whole installation, so every service reads it here (EDGELOOP_TOPIC_PREFIX).
    topic_prefix: str = ""

    def mqtt_auth(self) -> MqttAuth:
        """How this process connects to the MQTT broker (credentials, TLS)."""
        return MqttAuth(
            username=self.mqtt_username or None,
            password=self.mqtt_password.get_secret_value() or None,
            tls=self.mqtt_tls,
            ca_file=self.mqtt_tls_ca_file,
            cert_file=self.mqtt_tls_cert_file,
            key_file=self.mqtt_tls_key_file,
        )

    def resolved_database_url(self, service: str) -> str:
        """The database URL a service should use: SQLite per service in standalone mode."""
        if self.mode == "standalone" and self.database_url.startswith("postgresql"):
            path = (self.data_dir / f"{service}.sqlite3").resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        return self.database_url
