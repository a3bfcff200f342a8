"""Request and response bodies of the registry's HTTP API (docs/learning-loop.md, "Registry HTTP API")."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from edgeloop_common.topics import ID_PATTERN
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeloop_registry import service

Name = Annotated[
    str, Field(pattern=f"^{ID_PATTERN}$", description="Letters, digits, '_', '.', '-'; at most 64 characters.")
]
VersionNumber = Annotated[
    int,
    Field(
        ge=1,
        le=service.MAX_VERSION_NUMBER,
        description=f"Version number: a positive integer, at most {service.MAX_VERSION_NUMBER} (32-bit).",
    ),
]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Reason = Annotated[str, Field(min_length=1, max_length=2000, description="Why: kept in the alias history.")]
Actor = Annotated[str, Field(min_length=1, max_length=128, description="Who: a person or a service.")]
VersionStatus = Literal["registering", "ready", "failed", "archived"]


class ErrorOut(BaseModel):
    detail: str = Field(description="The reason the request was refused.")


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: str = Field("", max_length=2000)


class ModelOut(BaseModel):
    name: str
    description: str
    created_at: datetime
    latest_version: int | None = Field(description="Highest version number registered, if any.")
    production_version: int | None = Field(description="Version of the model-wide `production` alias, if set.")

    @classmethod
    def of(cls, model: service.Model) -> ModelOut:
        return cls(
            name=model.name,
            description=model.description,
            created_at=model.created_at,
            latest_version=model.latest_version,
            production_version=model.production_version,
        )


class ClassMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    precision: Fraction | None = None
    recall: Fraction | None = None
    f1: Fraction | None = None
    support: int | None = Field(None, ge=0)


class Baseline(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: VersionNumber = Field(description="The production version the trainer evaluated beside the candidate.")
    accuracy: Fraction | None = Field(
        None, description="Its accuracy on the candidate's evaluation set (or the figure `policy_metric` names)."
    )


class Metrics(BaseModel):
    """Evaluation of a version. Known fields are checked; other metrics are kept as given."""

    model_config = ConfigDict(extra="allow")

    policy_metric: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="The figure the promotion policy compares (e.g. `pr_auc`); unset: `accuracy`.",
    )
    accuracy: Fraction | None = Field(None, description="The metric of the promotion policy unless `policy_metric`.")
    per_class: dict[str, ClassMetrics] = Field(default_factory=dict)
    train_counts: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Training samples per class."
    )
    eval_counts: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Evaluation samples per class."
    )
    evaluation_set_id: str | None = Field(None, description="Which evaluation set `accuracy` was measured on.")
    baseline: Baseline | None = None


class LineageModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_snapshot_id: str | None = Field(None, max_length=128)
    parent_version: VersionNumber | None = Field(None, description="The version it was warm-started from.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Training parameters.")


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: VersionNumber | None = Field(None, description="Null: the next integer.")
    artifact_uri: str = Field(
        min_length=1, max_length=1024, description="Where the export lies, TF Serving layout `<base>/<model>/<v>`."
    )
    signature: dict[str, Any] = Field(default_factory=dict)
    metrics: Metrics = Field(default_factory=Metrics)
    reference_stats: dict[str, Any] | None = Field(None, description="Reference statistics for the drift service.")
    lineage: LineageModel = Field(default_factory=LineageModel)
    train_started_at: datetime | None = None
    train_duration_s: float | None = Field(None, ge=0.0)

    @model_validator(mode="after")
    def _finite_numbers_only(self) -> VersionIn:
        """JSON has no NaN or Infinity (PostgreSQL refuses them), though Python's parser lets them through."""
        for name in ("signature", "metrics", "reference_stats", "lineage"):
            where = _non_finite(
                getattr(self, name).model_dump() if name in ("metrics", "lineage") else getattr(self, name)
            )
            if where is not None:
                raise ValueError(f"{name}{where} is not a finite number")
        return self

    def to_new_version(self) -> service.NewVersion:
        return service.NewVersion(
            artifact_uri=self.artifact_uri,
            version=self.version,
            signature=self.signature,
            metrics=self.metrics.model_dump(mode="json", exclude_none=True),
            reference_stats=self.reference_stats,
            lineage=service.Lineage(
                self.lineage.dataset_snapshot_id, self.lineage.parent_version, self.lineage.parameters
            ),
            train_started_at=self.train_started_at,
            train_duration_s=self.train_duration_s,
        )


def _non_finite(value: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinite number inside ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or " "
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


class VersionSummaryOut(BaseModel):
    model_name: str
    version: int
    status: VersionStatus
    artifact_uri: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    lineage: LineageModel
    train_started_at: datetime | None
    train_duration_s: float | None
    created_at: datetime

    @classmethod
    def of(cls, version: service.ModelVersion) -> VersionSummaryOut:
        return cls(**_version_fields(version))


class VersionOut(VersionSummaryOut):
    reference_stats: dict[str, Any] | None

    @classmethod
    def of(cls, version: service.ModelVersion) -> VersionOut:
        return cls(**_version_fields(version), reference_stats=version.reference_stats)


def _version_fields(version: service.ModelVersion) -> dict[str, Any]:
    return {
        "model_name": version.model_name,
        "version": version.version,
        "status": version.status,
        "artifact_uri": version.artifact_uri,
        "signature": version.signature,
        "metrics": version.metrics,
        "lineage": LineageModel(
            dataset_snapshot_id=version.lineage.dataset_snapshot_id,
            parent_version=version.lineage.parent_version,
            parameters=version.lineage.parameters,
        ),
        "train_started_at": version.train_started_at,
        "train_duration_s": version.train_duration_s,
        "created_at": version.created_at,
    }


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: VersionStatus


class AliasOut(BaseModel):
    alias: str
    node_group: str | None = Field(description="Null: the model-wide alias.")
    version: int
    moved_at: datetime
    moved_by: str
    reason: str

    @classmethod
    def of(cls, alias: service.Alias) -> AliasOut:
        return cls(
            alias=alias.alias,
            node_group=alias.node_group,
            version=alias.version,
            moved_at=alias.moved_at,
            moved_by=alias.moved_by,
            reason=alias.reason,
        )


class AliasMoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: VersionNumber
    node_group: Name | None = Field(None, description="Null: the model-wide alias.")
    reason: Reason
    actor: Actor


class AliasMoveOut(BaseModel):
    alias: str
    node_group: str | None
    from_version: int | None
    to_version: int
    kind: Literal["move", "promotion", "rollback"]
    moved_by: str
    reason: str
    moved_at: datetime

    @classmethod
    def of(cls, move: service.AliasMove) -> AliasMoveOut:
        return cls(
            alias=move.alias,
            node_group=move.node_group,
            from_version=move.from_version,
            to_version=move.to_version,
            kind=move.kind,
            moved_by=move.moved_by,
            reason=move.reason,
            moved_at=move.moved_at,
        )


class PromotionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: VersionNumber
    node_group: Name | None = Field(None, description="Null: every node group that has no alias of its own.")
    reason: Reason
    actor: Actor
    force: bool = Field(False, description="Skip the policy: a person decided.")


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_group: Name | None = None
    reason: Reason
    actor: Actor
    to_version: VersionNumber | None = Field(None, description="Null: the previous production version.")


class PromotionOut(BaseModel):
    promoted: bool = Field(description="Whether `production` now points at `version`.")
    decision: str = Field(description="Why: the policy's comparison, or the rollback.")
    version: int
    previous_version: int | None = Field(description="The production version before (for the node group).")
    node_group: str | None
    alias: str = "production"

    @classmethod
    def of(cls, result: service.PromotionResult) -> PromotionOut:
        return cls(
            promoted=result.promoted,
            decision=result.decision,
            version=result.version,
            previous_version=result.previous_version,
            node_group=result.node_group,
            alias=result.alias,
        )
