"""Settings of the trainer service: ``EDGELOOP_TRAINER_*`` plus the shared ``EDGELOOP_*`` ones."""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.settings import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgeloop_trainer.recipe import Recipe


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
    not_trained_models: str = Field(
        "machine-failure",
        description="Models this trainer does not train, comma-separated: a TrainingRequested for one is logged, "
        "counted and skipped (the sensor failure model is retrained by the federated service).",
    )
    retrain_every_labels: int = Field(
        20, ge=0, description="Ask for a training after this many new labels (0: never on labels)."
    )
    schedule_s: float = Field(0.0, ge=0, description="Ask for a training of every model this often (0: off).")
    warm_start: bool = Field(True, description="Continue from production's weights (false: always from scratch).")
    max_attempts: int = Field(2, ge=1, description="Runs of one request when the trainer stops during a run.")

    backbone: str = Field(
        "efficientnet-lite0",
        description="What a version is built on: efficientnet-lite0 (ImageNet weights from its installed package, "
        "frozen, a trained head), efficientnet-lite2 (deeper, for the cloud) or small-cnn (from scratch).",
    )
    fine_tune: int = Field(0, ge=0, description="Top blocks of a pretrained backbone trained too (0: head only).")
    image_size: int | None = Field(
        None, ge=16, description="Images are resized to SIZE x SIZE (default: the backbone's own, 224 for Lite0)."
    )
    model_backbones: str = Field(
        "",
        description="Another backbone for some models, MODEL=BACKBONE[:SIZE] comma-separated (e.g. a shallow edge "
        "model and a deep cloud model of the same classes: 'catdog-edge=efficientnet-lite0:160,"
        "catdog-cloud=efficientnet-lite2').",
    )
    epochs: int | None = Field(None, ge=1, description="Epochs of a training from scratch (default: the backbone's).")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate of a training from scratch.")
    incremental_epochs: int | None = Field(
        None,
        ge=1,
        description="Epochs of a warm-started training (default: half the epochs for a pretrained backbone's head, "
        "a quarter, at least 5, for the small CNN).",
    )
    incremental_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Learning rate of a warm-started training (default: the same for a head, a fifth for the "
        "small CNN).",
    )
    new_sample_weight: int = Field(
        1,
        ge=1,
        description="A warm-started training sees each training image that is new since the parent version "
        "(not in its snapshot, or a new label) this many times per epoch, the others once; class weights are "
        "computed on the repeated set (1: no emphasis).",
    )
    batch_size: int = Field(32, ge=1, description="Images per training step.")
    seed: int = Field(42, description="Seed of the initial weights, augmentation and shuffling.")
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of images (by hash of their bytes) kept for evaluation."
    )

    actor: str = Field("trainer", description="Name the trainer gives in requests and promotions.")

    common: CommonSettings = Field(default_factory=CommonSettings)

    def resolved_data_dir(self) -> Path:
        return (self.data_dir or self.common.data_dir / "trainer").resolve()

    def resolved_model_base(self) -> Path:
        return (self.model_base or self.common.data_dir / "models").resolve()

    def resolved_feature_cache(self) -> Path:
        return self.resolved_data_dir() / "features"

    def default_recipe(self) -> Recipe:
        return Recipe(self.backbone, self.image_size, self.fine_tune)

    def model_recipes(self) -> dict[str, Recipe]:
        """``model_backbones`` parsed; a malformed entry stops start-up with the reason."""
        recipes: dict[str, Recipe] = {}
        for entry in (part.strip() for part in self.model_backbones.split(",")):
            if not entry:
                continue
            model, sep, spec = entry.partition("=")
            backbone, _, size = spec.partition(":")
            if not sep or not model.strip() or not backbone.strip() or (size and not size.isdigit()):
                raise ValueError(f"EDGELOOP_TRAINER_MODEL_BACKBONES: {entry!r} is not MODEL=BACKBONE[:SIZE]")
            recipes[model.strip()] = Recipe(backbone.strip(), int(size) if size else None)
        return recipes

    def not_trained_models_set(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.not_trained_models.split(",") if name.strip())

    def model_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.models.split(",") if name.strip())
