"""Settings of the ingest service: ``EDGELOOP_INGEST_*`` plus the shared ``EDGELOOP_*`` ones."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from edgeloop_common.settings import CommonSettings
from edgeloop_common.topics import (
    ID_PATTERN,
    MQTT_IMAGE,
    MQTT_IMAGE_SUBSCRIPTION,
    MQTT_TELEMETRY,
    MQTT_TELEMETRY_SUBSCRIPTION,
)
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_INGEST_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8081, description="HTTP port.")

    mqtt_enabled: bool = Field(True, description="Run the MQTT bridge (off: HTTP uploads only).")
    mqtt_client_id: str = Field(
        "edgeloop-ingest",
        description="Fixed MQTT client id: the broker keeps this persistent session's subscriptions "
        "and unacknowledged messages across restarts.",
    )
    mqtt_receive_maximum: int = Field(
        1000, ge=1, le=65535, description="QoS 1 messages the broker may have in flight to the bridge."
    )
    mqtt_session_expiry_s: int = Field(
        7 * 24 * 3600, ge=1, description="How long the broker keeps the session while the bridge is away."
    )
    mqtt_keepalive_s: int = Field(30, ge=5, description="MQTT keepalive.")
    sites: str = Field(
        "",
        description="Comma-separated site ids this ingest bridges (dt/edgeloop/<site>/+/image and .../telemetry "
        "for each); empty: every site (dt/edgeloop/+/+/...). A persistent session keeps its earlier "
        "subscriptions: change the list together with MQTT_CLIENT_ID.",
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT protocol version: 5, or 3.1.1 for brokers without MQTT 5 (the embedded one)."
    )

    max_image_bytes: int = Field(10 * MIB, ge=1, description="Largest accepted image, in bytes.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest accepted image, width x height.")
    max_telemetry_bytes: int = Field(64 * 1024, ge=1, description="Largest accepted telemetry message.")
    dead_letter_max_payload_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="Original bytes kept in a dead letter; larger payloads keep this prefix "
        "(a Kafka record is limited to about 1 MiB).",
    )
    redelivery_window_s: float = Field(
        600.0,
        ge=0,
        description="A redelivered MQTT message (DUP flag) with the same device and sha256 as a sample "
        "stored this recently reuses that sample and its event id.",
    )

    batch_max_messages: int = Field(256, ge=1, description="Messages validated and stored together.")
    batches_in_flight: int = Field(4, ge=1, description="Batches being validated and stored at once.")
    worker_threads: int = Field(
        32, ge=1, description="Threads validating and storing images (storing waits on fsync: more than the CPUs)."
    )
    drain_batch_messages: int = Field(500, ge=1, description="Buffered events re-published per round.")
    drain_retry_s: float = Field(1.0, gt=0, description="Pause before retrying Kafka while it is unreachable.")

    blob_dir: Path | None = Field(None, description="Blob store folder (default: <data_dir>/blobs).")
    buffer_path: Path | None = Field(
        None,
        description="Disk buffer for events while Kafka is unreachable (default: <data_dir>/ingest-buffer.sqlite3).",
    )

    common: CommonSettings = Field(default_factory=CommonSettings)

    @field_validator("sites")
    @classmethod
    def _valid_sites(cls, value: str) -> str:
        for site in site_list(value):
            if not re.fullmatch(ID_PATTERN, site):
                raise ValueError(
                    f"site id {site!r} is not valid (1-64 characters: letters, digits, '_', '.', '-'; "
                    "starting with a letter or digit)"
                )
        return value

    def mqtt_subscriptions(self) -> tuple[str, ...]:
        """The MQTT topic filters the bridge subscribes to: every site, or one pair per listed site."""
        sites = site_list(self.sites)
        if not sites:
            return (MQTT_IMAGE_SUBSCRIPTION, MQTT_TELEMETRY_SUBSCRIPTION)
        return tuple(
            template.format(site=site, device="+") for site in sites for template in (MQTT_IMAGE, MQTT_TELEMETRY)
        )

    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.common.data_dir / "blobs").resolve()

    def resolved_buffer_path(self) -> Path:
        return (self.buffer_path or self.common.data_dir / "ingest-buffer.sqlite3").resolve()


def site_list(value: str) -> list[str]:
    """``"site-a, site-b"`` -> ``["site-a", "site-b"]`` (order kept, duplicates dropped)."""
    return list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
