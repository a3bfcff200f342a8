"""The edge agent's settings: ``EDGELOOP_EDGE_*`` environment variables (docs/edge.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from edgeloop_common.mqtt_auth import MqttAuth
from edgeloop_common.settings import CommonSettings
from edgeloop_common.topics import ID_PATTERN
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

UplinkPolicy = Literal["hard+sample", "all", "hard"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_EDGE_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8087, description="HTTP port (health, status, metrics).")

    site: str = Field("", description="The edge site this agent serves (required); also its node group's name.")

    # The site's MQTT broker (devices publish there). Empty host: the shared EDGELOOP_MQTT_HOST / _PORT.
    mqtt_host: str = Field("", description="The site broker's host; empty: EDGELOOP_MQTT_HOST.")
    mqtt_port: int = Field(0, ge=0, description="The site broker's port; 0: EDGELOOP_MQTT_PORT.")
    mqtt_client_id: str = Field("", description="MQTT client id of the persistent session; empty: edgeloop-edge-SITE.")
    mqtt_protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version of the site broker.")
    # The agent's identity on a secured site broker (docs/security.md: `edgeloop device add-service edge --site`).
    mqtt_username: str = Field("", description="Username on the site broker; empty: EDGELOOP_MQTT_USERNAME.")
    mqtt_password: SecretStr = Field(SecretStr(""), description="Password on the site broker (with the username).")
    mqtt_tls_ca_file: Path | None = Field(None, description="CA of the site broker's TLS listener; TLS when set.")
    mqtt_session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="How long the broker keeps the session.")
    mqtt_receive_maximum: int = Field(256, ge=1, description="Most unacknowledged pictures the broker sends at once.")

    # The node group's model server (the TF Serving Deployment the deployer rolls out at this site).
    model_name: str = Field("edgeloop-classifier", description="The (shallow) model this site serves.")
    model_server_protocol: Literal["rest", "grpc"] = Field("rest", description="rest or grpc.")
    model_server_url: str = Field("http://127.0.0.1:8501", description="TF Serving REST base URL of the node group.")
    model_server_grpc_target: str = Field("127.0.0.1:8500", description="TF Serving gRPC host:port of the node group.")
    model_timeout_s: float = Field(5.0, gt=0, description="Timeout of one model server call.")
    metadata_refresh_s: float = Field(2.0, gt=0, description="How long the served version is cached before asking.")
    inference_concurrency: int = Field(4, ge=1, description="Pictures classified at once.")

    # Joint inference with the deep cloud model.
    cloud_url: str = Field(
        "", description="Base URL of the cloud inference gateway (the deep model); empty: no joint inference."
    )
    joint_budget_ms: float = Field(
        300.0, gt=0, description="How long a hard example waits for the cloud's answer before the edge's is sent."
    )
    link_retry_s: float = Field(
        5.0, gt=0, description="After the cloud failed, how long hard examples get the edge's answer without asking."
    )

    # The canary split (docs/edge.md, "Canary rollouts"): the site's canary, learned from the deployer.
    deployer_url: str = Field(
        "", description="Base URL of the cloud's deployer, asked for the site's canary; empty: no canary split."
    )
    canary_poll_s: float = Field(
        2.0, gt=0, description="How often the deployer is asked for the site's canary (keep it below its SETTLE_S)."
    )

    # Hard-example mining (edgeloop_common.mining).
    hard_example_miner: Literal["none", "confidence", "entropy", "cross_entropy", "ibt"] = Field(
        "confidence", description="Which miner flags hard examples."
    )
    hard_example_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="The miner's threshold (confidence: hard below it; entropy: hard above it)."
    )

    # The uplink to the cloud (store and forward).
    ingest_url: str = Field("", description="Base URL of the cloud's ingest (the uplink); empty: keep everything here.")
    uplink_policy: UplinkPolicy = Field(
        "hard+sample", description="Which pictures travel with their records: hard+sample, all or hard."
    )
    uplink_sample_rate: float = Field(0.05, ge=0.0, le=1.0, description="hard+sample: the share of the rest sent.")
    uplink_max_records: int = Field(100_000, ge=1, description="Most records the uplink queue keeps.")
    uplink_max_bytes: int = Field(2 * 1024**3, ge=1, description="Most picture bytes the uplink queue keeps.")
    uplink_timeout_s: float = Field(10.0, gt=0, description="Timeout of one uplink request.")
    uplink_retry_max_s: float = Field(10.0, gt=0, description="Longest wait between uplink retries.")

    # Sensor telemetry (docs/telemetry.md, "Scoring at the edge"): kept in the site history, scored here, only
    # the scores and alerts go to the cloud.
    telemetry_scoring: bool = Field(True, description="Take the site's telemetry: history, scores, alerts.")
    telemetry_model_name: str = Field("machine-failure", description="The failure model on the node group's server.")
    telemetry_history_file: Path | None = Field(
        None, description="The site's reading history (SQLite); default: the data dir's site-history.sqlite3."
    )
    telemetry_alert_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Alert threshold for every version; unset: each version's registered one."
    )
    telemetry_default_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Threshold of a version whose registered one cannot be read."
    )
    telemetry_hysteresis: float = Field(
        0.1, ge=0.0, le=1.0, description="A device in alert re-arms once its probability is below threshold - this."
    )
    telemetry_max_batch: int = Field(256, ge=1, description="Most windows in one :predict call.")
    telemetry_max_wait_ms: float = Field(5.0, ge=0.0, description="Longest a window waits for others to join it.")
    telemetry_outbox_max_records: int = Field(
        20_000, ge=1, description="Most scored-telemetry records waiting for the uplink (the oldest go first)."
    )
    registry_url: str = Field(
        "", description="The cloud's model registry, for each failure-model version's threshold; empty: the default."
    )

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest picture accepted.")
    data_dir: Path | None = Field(None, description="The edge store's folder; default: EDGELOOP_DATA_DIR/edge-SITE.")

    common: CommonSettings = Field(default_factory=CommonSettings)

    @field_validator("site")
    @classmethod
    def _site_is_an_id(cls, site: str) -> str:
        if site and not re.fullmatch(ID_PATTERN, site):
            raise ValueError(f"invalid site id {site!r}")
        return site

    def resolved_mqtt(self) -> tuple[str, int]:
        return (self.mqtt_host or self.common.mqtt_host, self.mqtt_port or self.common.mqtt_port)

    def resolved_mqtt_auth(self) -> MqttAuth:
        """The site broker's credentials and TLS: the agent's own when set, else the shared EDGELOOP_MQTT_*."""
        common = self.common.mqtt_auth()
        if not self.mqtt_username and self.mqtt_tls_ca_file is None:
            return common
        ca_file = self.mqtt_tls_ca_file or common.ca_file
        return MqttAuth(
            username=self.mqtt_username or common.username,
            password=self.mqtt_password.get_secret_value() if self.mqtt_username else common.password,
            tls=common.tls or ca_file is not None,
            ca_file=ca_file,
        )

    def resolved_client_id(self) -> str:
        return self.mqtt_client_id or f"edgeloop-edge-{self.site}"

    def resolved_data_dir(self) -> Path:
        return self.data_dir or self.common.data_dir / f"edge-{self.site}"

    def resolved_history_file(self) -> Path:
        return self.telemetry_history_file or self.resolved_data_dir() / "site-history.sqlite3"
