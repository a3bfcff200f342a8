"""Settings of the federated service: ``EDGELOOP_FEDERATED_*`` plus the shared ``EDGELOOP_*`` ones."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from edgeloop_common.settings import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgeloop_federated.ports import TrainingSpec


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_FEDERATED_", extra="ignore", protected_namespaces=())

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8088, description="HTTP port.")
    flower_address: str = Field(
        "0.0.0.0:8089", description="Where a training's Flower server listens (host:port the sites' clients dial)."
    )

    registry_url: str = Field("http://127.0.0.1:8083", description="The registry's base URL.")
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one call to the registry.")
    model_base: Path | None = Field(
        None,
        description="Where versions are exported, MODEL_BASE/<model>/<version>/ (default: <EDGELOOP_DATA_DIR>/models).",
    )
    model_name: str = Field("machine-failure", description="The telemetry model this service trains.")
    promote: bool = Field(True, description="Ask the registry's promotion gate after registering a version.")
    actor: str = Field("federated", description="Name the service gives in promotions.")

    rounds: int = Field(5, ge=1, le=1000, description="Rounds of a training.")
    strategy: Literal["fedavg", "fedprox"] = Field(
        "fedavg", description="fedavg, or fedprox (a proximal term keeps non-identical sites near the global model)."
    )
    proximal_mu: float = Field(0.1, ge=0, description="FedProx's proximal weight mu.")
    model_kind: Literal["logistic", "mlp"] = Field("logistic", description="logistic or mlp.")
    local_epochs: int = Field(5, ge=1, le=1000, description="Epochs each site trains per round.")
    learning_rate: float = Field(0.01, gt=0, description="Learning rate of the sites' local training.")
    batch_size: int = Field(128, ge=1, description="Windows per local training step.")
    min_fit_clients: int = Field(2, ge=1, description="A round with fewer sites answering fails the training.")
    min_available_clients: int = Field(2, ge=1, description="Sites connected before the first round starts.")
    round_timeout_s: float = Field(
        120.0, gt=0, description="A site that has not answered a round by then is left out of it."
    )
    connect_timeout_s: float = Field(300.0, gt=0, description="How long a training waits for its sites to connect.")
    seed: int = Field(0, description="Seed of the initial weights and the sites' shuffling.")

    common: CommonSettings = Field(default_factory=CommonSettings)

    def resolved_model_base(self) -> Path:
        return (self.model_base or self.common.data_dir / "models").resolve()

    def training_defaults(self) -> TrainingSpec:
        return TrainingSpec(
            model_name=self.model_name,
            rounds=self.rounds,
            strategy=self.strategy,
            proximal_mu=self.proximal_mu,
            model_kind=self.model_kind,
            local_epochs=self.local_epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            min_fit_clients=self.min_fit_clients,
            min_available_clients=self.min_available_clients,
            round_timeout_s=self.round_timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            seed=self.seed,
        )
