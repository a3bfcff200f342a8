"""Settings of the registry: ``EDGELOOP_REGISTRY_*`` plus the shared ``EDGELOOP_*`` ones."""

from __future__ import annotations

from edgeloop_common.settings import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_REGISTRY_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8083, description="HTTP port.")

    promotion_margin: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Accuracy a candidate must gain over production, on the same evaluation set, to be promoted.",
    )
    database_url: str | None = Field(
        None,
        description="Database of the registry (default: EDGELOOP_DATABASE_URL; standalone: SQLite under "
        "EDGELOOP_DATA_DIR).",
    )
    migrate_on_start: bool = Field(True, description="Run `alembic upgrade head` when the service starts.")

    outbox_poll_interval_s: float = Field(
        1.0, gt=0, description="How often the relay looks for outbox rows it was not told about."
    )
    outbox_batch_size: int = Field(100, ge=1, description="Outbox rows the relay reads per round.")
    outbox_retry_max_s: float = Field(
        10.0, gt=0, description="Longest pause between relay attempts while the bus is unavailable."
    )

    common: CommonSettings = Field(default_factory=CommonSettings)

    def resolved_database_url(self) -> str:
        return self.database_url or self.common.resolved_database_url("registry")
