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

from edgeloop_common.kafka_auth import KafkaAuth, SaslMechanism, SecurityProtocol
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
    # How every Kafka client of this process reaches the brokers (docs/security.md, "Kafka and PostgreSQL over
    # TLS"): PLAINTEXT (`edgeloop infra up`'s 9092), SSL, SASL_PLAINTEXT or SASL_SSL (`infra up --secure`'s 9095).
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_username: str = ""
    kafka_password: SecretStr = SecretStr("")
    # TLS: the CA that signed the brokers' certificates (none: the system's trust store); an optional client
    # certificate for a broker that asks for one (ssl.client.auth).
    kafka_tls_ca_file: Path | None = None
    kafka_tls_cert_file: Path | None = None
    kafka_tls_key_file: Path | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # This process's identity on a secured broker (docs/security.md); empty: anonymous (`edgeloop infra up`).
    mqtt_username: str = ""
    mqtt_password: SecretStr = SecretStr("")
    # Or a file holding it (a mounted secret: docker-compose.yml's mqtt-identities job writes one per service).
    mqtt_password_file: Path | None = None
    # TLS to the broker: on with mqtt_tls or a CA file (verifies the broker; none: the system's trust store).
    mqtt_tls: bool = False
    mqtt_tls_ca_file: Path | None = None
    # A client certificate instead of (or besides) the password.
    mqtt_tls_cert_file: Path | None = None
    mqtt_tls_key_file: Path | None = None
    # PostgreSQL in distributed mode; standalone mode uses SQLite under data_dir.
    database_url: str = "postgresql+psycopg://edgeloop:edgeloop@127.0.0.1:5432/edgeloop"
    data_dir: Path = Path(".edgeloop/data")
    # Where image blobs live (edgeloop_common.blobs, docs/ingest.md "Blob store"): folder, a directory of this node
    # (standalone mode, one machine), or s3, a bucket of any S3-compatible server that every node reads.
    blob_store: Literal["folder", "s3"] = "folder"
    # Empty: AWS S3 itself in s3_region; else the server's URL (`edgeloop infra up`: SeaweedFS on :8333).
    s3_endpoint_url: str = ""
    s3_bucket: str = "edgeloop-blobs"
    s3_region: str = "us-east-1"
    # Both empty: boto3's own chain (AWS_* variables, an instance or pod role).
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    # The CA that signed an https endpoint's certificate (none: the system's trust store).
    s3_ca_file: Path | None = None
    log_level: str = "INFO"
    # Prefix of every Kafka topic and consumer group name: several installations (or test runs) on one cluster.
    # One value for the whole installation, so every service reads it here (EDGELOOP_TOPIC_PREFIX).
    topic_prefix: str = ""
    # OpenTelemetry: spans exported over OTLP/HTTP to this endpoint (http://collector:4318); empty: OpenTelemetry's
    # own OTEL_EXPORTER_OTLP_ENDPOINT, else tracing off (docs/observability.md).
    otlp_endpoint: str = ""
    # API tokens and roles on every HTTP service (edgeloop_common.api_auth, docs/security.md): off lets every
    # request through (standalone, development); required refuses a request without a token its route allows.
    api_auth: Literal["off", "required"] = "off"
    # The token store(s): JSON files of hashed tokens, comma separated; `edgeloop token` writes the first.
    api_tokens_file: str = ""
    # /metrics without a token (Prometheus scrapes it); false: it needs a viewer's (or service's) token too.
    api_auth_open_metrics: bool = True
    # This process's own token, presented to the other EdgeLoop services it calls (or a file holding it).
    api_token: SecretStr = SecretStr("")
    api_token_file: Path | None = None

    def mqtt_auth(self) -> MqttAuth:
        """How this process connects to the MQTT broker (credentials, TLS). The password: EDGELOOP_MQTT_PASSWORD,
        else the file EDGELOOP_MQTT_PASSWORD_FILE names (ConfigurationError when it cannot be read)."""
        password = self.mqtt_password.get_secret_value()
        if not password and self.mqtt_password_file is not None:
            try:
                password = self.mqtt_password_file.read_text().strip()
            except OSError as exc:
                raise ConfigurationError(
                    f"EDGELOOP_MQTT_PASSWORD_FILE={self.mqtt_password_file} cannot be read: {exc}"
                ) from exc
        return MqttAuth(
            username=self.mqtt_username or None,
            password=password or None,
            tls=self.mqtt_tls,
            ca_file=self.mqtt_tls_ca_file,
            cert_file=self.mqtt_tls_cert_file,
            key_file=self.mqtt_tls_key_file,
        )

    def kafka_auth(self) -> KafkaAuth:
        """How this process's Kafka clients connect (protocol, SCRAM credentials, TLS); ConfigurationError when
        the settings disagree (SASL without a password, a client certificate without TLS)."""
        try:
            return KafkaAuth(
                security_protocol=self.kafka_security_protocol,
                sasl_mechanism=self.kafka_sasl_mechanism,
                username=self.kafka_username or None,
                password=self.kafka_password.get_secret_value() or None,
                ca_file=self.kafka_tls_ca_file,
                cert_file=self.kafka_tls_cert_file,
                key_file=self.kafka_tls_key_file,
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"{exc}: set EDGELOOP_KAFKA_SECURITY_PROTOCOL, EDGELOOP_KAFKA_USERNAME, EDGELOOP_KAFKA_PASSWORD, "
                "EDGELOOP_KAFKA_TLS_CA_FILE (and EDGELOOP_KAFKA_TLS_CERT_FILE with EDGELOOP_KAFKA_TLS_KEY_FILE)"
            ) from exc

    def resolved_database_url(self, service: str) -> str:
        """The database URL a service should use: SQLite per service in standalone mode."""
        if self.mode == "standalone" and self.database_url.startswith("postgresql"):
            path = (self.data_dir / f"{service}.sqlite3").resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        return self.database_url
