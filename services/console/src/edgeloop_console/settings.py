"""Settings of the console: ``EDGELOOP_CONSOLE_*`` plus the shared ``EDGELOOP_*`` ones.

The console keeps nothing of its own: every figure it shows is read from a service's HTTP API at the moment the
page is asked for, and every action is that service's API call (docs/console.md).
"""

from __future__ import annotations

from edgeloop_common.settings import CommonSettings
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_TOKEN_CHARS = 12


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_CONSOLE_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8080, description="HTTP port.")

    admin_token: SecretStr = Field(
        SecretStr(""),
        description=f"Optional: a token (at least {MIN_TOKEN_CHARS} characters) that signs in as admin besides the "
        "API tokens of EDGELOOP_API_TOKENS_FILE; its calls to the services carry EDGELOOP_API_TOKEN. Changing it "
        "signs its sessions out.",
    )
    session_secret: SecretStr = Field(
        SecretStr(""),
        description="Encrypts and signs the session cookies (every replica needs the same). Empty: derived from the "
        "admin token, else a random one per process (sessions end with a restart).",
    )
    session_max_age_s: int = Field(8 * 3600, ge=60, description="A session lasts this long after sign-in.")
    secure_cookies: bool = Field(
        False, description="Mark the session cookie Secure (set true whenever the console is served over HTTPS)."
    )

    ingest_url: str = Field("http://127.0.0.1:8081", description="Ingest base URL (pictures, labels, devices).")
    registry_url: str = Field("http://127.0.0.1:8083", description="Registry base URL (versions, aliases).")
    trainer_url: str = Field("http://127.0.0.1:8084", description="Trainer base URL (training runs).")
    drift_url: str = Field("http://127.0.0.1:8085", description="Drift service base URL.")
    deployer_url: str = Field("http://127.0.0.1:8086", description="Deployer base URL (node groups, rollouts).")
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of one request to a service.")

    model_name: str = Field("edgeloop-classifier", description="The model the pages open with.")
    classes: str = Field(
        "",
        description="Label classes, comma separated, in key order (1, 2, ...); empty: the classes of the model's "
        "production version in the registry, else those the picture was scored on.",
    )
    labeled_by: str = Field("console", description="Recorded as labeled_by / actor with labels and promotions.")
    page_size: int = Field(24, ge=1, le=200, description="Pictures per page.")

    common: CommonSettings = Field(default_factory=CommonSettings)

    def class_list(self) -> list[str]:
        return [name.strip() for name in self.classes.split(",") if name.strip()]
