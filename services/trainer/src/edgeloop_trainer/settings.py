"""Settings of the trainer service: ``EDGELOOP_TRAINER_*`` plus the shared ``EDGELOOP_*`` ones."""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.settings import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_TRAINER_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8084, description="HTTP port.")

    registry_url: str = Field("http://127.0.0.1:8083", description="The registry's base URL.")
    ingest_url: str = Field(
        "http://127.0.0.1:8081", description="Ingest's base URL (labeled samples); empty: the seed folder only."
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one call to the registry or ingest.")

    seed_data_dir: Path | None = Field(
        None, description="Folder of class sub-folders of images that every snapshot starts from (optional)."
    )
    data_dir: Path | None = Field(
        None, description="Snapshots and the image cache (default: <EDGELOOP_DATA_DIR>/trainer)."
    )
    model_base: Path | None = Field(
        None,
        description="Where versions are exported, MODEL_BASE/<model>/<version>/ (default: <EDGELOOP_DATA_DIR>/models).",
    )

    models: str = Field(
        "edgeloop-classifier", description="Models retrained on new labels and on the schedule (comma-separated)."
    )
    retrain_every_labels: int = Field(
        20, ge=0, description="Ask for a training after this many new labels (0: never on labels)."
    )
    schedule_s: float = Field(0.0, ge=0, description="Ask for a training of every model this often (0: off).")
    warm_start: bool = Field(True, description="Continue from production's weights (false: always from scratch).")
    max_attempts: int = Field(2, ge=1, description="Runs of one request when the trainer stops during a run.")

    epochs: int = Field(15, ge=1, description="Epochs of a training from scratch.")
    learning_rate: float = Field(1e-3, gt=0, description="Learning rate of a training from scratch.")
    incremental_epochs: int = Field(5, ge=1, description="Epochs of a warm-started training.")
    incremental_learning_rate: float = Field(2e-4, gt=0, description="Learning rate of a warm-started training.")
    new_sample_weight: int = Field(
        1,
        ge=1,
        description="A warm-started training sees each training image that is new since the parent version "
        "(not in its snapshot, or a new label) this many times per epoch, the others once; class weights are "
        "computed on the repeated set (1: no emphasis).",
    )
    image_size: int = Field(128, ge=16, description="Images are resized to SIZE x SIZE.")
    batch_size: int = Field(32, ge=1, description="Images per training step.")
    seed: int = Field(42, description="Seed of the initial weights, augmentation and shuffling.")
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of images (by hash of their bytes) kept for evaluation."
    )

    actor: str = Field("trainer", description="Name the trainer gives in requests and promotions.")
    topic_prefix: str = Field("", description="Prefix of every Kafka topic name (tests, several installations).")

    common: CommonSettings = Field(default_factory=CommonSettings)

    def resolved_data_dir(self) -> Path:
        return (self.data_dir or self.common.data_dir / "trainer").resolve()

    def resolved_model_base(self) -> Path:
        return (self.model_base or self.common.data_dir / "models").resolve()

    def model_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.models.split(",") if name.strip())
