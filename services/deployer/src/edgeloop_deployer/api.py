"""HTTP: deploy, delete and roll back a model version per node group (the console's Deploy and Delete buttons).

A deploy or rollback answers 202 at once with the rollout it started; ``GET`` shows its progress.
Domain errors answer the status of :data:`STATUS_FOR_ERROR` with ``{"detail": reason}``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from edgeloop_common.http_errors import ServiceNotRunningError, StatusForError, error_answers
from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeloop_deployer.canary import ArmStats, Canary, CanaryPolicy, CanaryStats
from edgeloop_deployer.service import (
    CanaryNotFoundError,
    DeployerError,
    DeploymentNotFoundError,
    DeploymentState,
    InvalidRequestError,
    NoCanaryError,
    NothingToRollBackError,
    RolloutRecord,
    RolloutService,
    UnknownNodeGroupError,
)

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])

# Domain errors -> HTTP status, in one place (installed by app.py).
STATUS_FOR_ERROR: StatusForError = {
    UnknownNodeGroupError: status.HTTP_404_NOT_FOUND,
    DeploymentNotFoundError: status.HTTP_404_NOT_FOUND,
    NothingToRollBackError: status.HTTP_409_CONFLICT,
    CanaryNotFoundError: status.HTTP_404_NOT_FOUND,
    NoCanaryError: status.HTTP_409_CONFLICT,
    InvalidRequestError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    DeployerError: status.HTTP_502_BAD_GATEWAY,  # the target failed (e.g. the API refused a deletion)
}

# What the routes document beside their success (the schemathesis sweep of tests/hostile holds them to it).
UNKNOWN = error_answers({404: "Unknown node group, or no deployment of the model there."})
TARGET_FAILED = error_answers({502: "The deployment target refused or failed."})
NOTHING_TO_ROLL_BACK = error_answers({409: "No earlier version to roll back to."})
NO_CANARY = error_answers({404: "Unknown node group, or no canary of the model ever ran there."})
NOT_DECIDABLE = error_answers({409: "No canary of the model runs there that can be decided so (or none ran)."})

# A Kubernetes annotation key: an optional DNS-subdomain prefix and a name of at most 63 characters.
_ANNOTATION_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def get_service(request: Request) -> RolloutService:
    service: RolloutService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise ServiceNotRunningError("the deployer is starting or stopping")
    return service


Service = Annotated[RolloutService, Depends(get_service)]


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=0)
    node_group: str = Field(min_length=1, max_length=64)
    reason: str = Field("", max_length=1000)
    pod_annotations: dict[str, str] = Field(
        default_factory=dict, description="Extra pod-template annotations for this rollout (tests, debugging)."
    )
    canary_weight: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Share of the group's traffic for a canary of this version first; 0: at once; "
        "absent: EDGELOOP_DEPLOYER_CANARY_WEIGHT.",
    )

    @field_validator("pod_annotations")
    @classmethod
    def _valid_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ANNOTATION_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid Kubernetes annotation key")
        return value


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=1000)


class CanaryDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=1000)


class ArmOut(BaseModel):
    version: int
    answers: int
    errors: int = Field(description="The canary's: answers of its share that the stable version had to give.")
    error_rate: float
    mean_confidence: float | None
    p95_latency_ms: float | None

    @classmethod
    def of(cls, version: int, arm: ArmStats) -> ArmOut:
        return cls(
            version=version,
            answers=arm.answers,
            errors=arm.errors,
            error_rate=arm.error_rate,
            mean_confidence=arm.mean_confidence,
            p95_latency_ms=arm.p95_latency_ms,
        )


class CanaryPolicyOut(BaseModel):
    window_s: float
    settle_s: float
    min_samples: int
    max_error_rate: float
    max_latency_ratio: float
    max_confidence_drop: float
    max_wait_s: float


class CanaryOut(BaseModel):
    model_name: str
    node_group: str
    version: int
    stable_version: int
    weight: float
    status: str = Field(description="deploying, watching, promoting, completed, rolled_back or superseded.")
    reason: str
    endpoint: str | None = Field(description="The canary's model server while it exists.")
    started_at: datetime
    watch_from: datetime | None
    window_ends_at: datetime | None
    finished_at: datetime | None
    canary: ArmOut | None = Field(description="What the canary's answers show so far (while it runs).")
    stable: ArmOut | None = Field(description="The same of the stable version's answers.")
    policy: CanaryPolicyOut

    @classmethod
    def of(cls, canary: Canary, stats: CanaryStats | None, service: RolloutService) -> CanaryOut:
        policy: CanaryPolicy = service.config.canary
        running = canary.status in ("deploying", "watching", "promoting")
        return cls(
            model_name=canary.model_name,
            node_group=canary.node_group,
            version=canary.version,
            stable_version=canary.stable_version,
            weight=canary.weight,
            status=canary.status,
            reason=canary.reason,
            endpoint=service.target.canary_endpoint(canary.model_name, canary.node_group) if running else None,
            started_at=canary.started_at,
            watch_from=canary.watch_from,
            window_ends_at=canary.window_ends_at,
            finished_at=canary.finished_at,
            canary=ArmOut.of(canary.version, stats.canary) if stats else None,
            stable=ArmOut.of(canary.stable_version, stats.stable) if stats else None,
            policy=CanaryPolicyOut(
                window_s=policy.window_s,
                settle_s=policy.settle_s,
                min_samples=policy.min_samples,
                max_error_rate=policy.max_error_rate,
                max_latency_ratio=policy.max_latency_ratio,
                max_confidence_drop=policy.max_confidence_drop,
                max_wait_s=policy.max_wait_s,
            ),
        )


class RolloutOut(BaseModel):
    rollout_id: str
    version: int | None
    action: str
    trigger: str
    phase: str
    detail: str
    pod_annotations: dict[str, str]
    started_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, record: RolloutRecord) -> RolloutOut:
        return cls(
            rollout_id=record.rollout_id,
            version=record.version,
            action=record.action,
            trigger=record.trigger,
            phase=record.phase,
            detail=record.detail,
            pod_annotations=dict(record.pod_annotations),
            started_at=record.started_at,
            finished_at=record.finished_at,
        )


class DeploymentOut(BaseModel):
    model_name: str
    node_group: str
    desired_version: int | None
    actual_version: int | None
    previous_version: int | None
    phase: str
    reason: str
    endpoint: str | None = Field(description="TF Serving REST base URL of the node group's model server.")
    updated_at: datetime
    in_flight: RolloutOut | None = None

    @classmethod
    def of(
        cls, state: DeploymentState, service: RolloutService, in_flight: RolloutRecord | None = None
    ) -> DeploymentOut:
        return cls(
            model_name=state.model_name,
            node_group=state.node_group,
            desired_version=state.desired_version,
            actual_version=state.actual_version,
            previous_version=state.previous_version,
            phase=state.phase,
            reason=state.reason,
            endpoint=service.endpoint(state.model_name, state.node_group),
            updated_at=state.updated_at,
            in_flight=RolloutOut.of(in_flight) if in_flight else None,
        )


class DeploymentDetail(DeploymentOut):
    rollouts: list[RolloutOut]


class StartedRollout(BaseModel):
    rollout: RolloutOut
    deployment: str = Field(description="Where to follow it: GET this path.")


def _in_flight(service: RolloutService) -> dict[tuple[str, str], RolloutRecord]:
    return {(record.model_name, record.node_group): record for record in service.in_flight()}


def _started(record: RolloutRecord) -> StartedRollout:
    return StartedRollout(
        rollout=RolloutOut.of(record), deployment=f"/v1/deployments/{record.model_name}/{record.node_group}"
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses={**UNKNOWN, **TARGET_FAILED})
async def deploy(body: DeployRequest, service: Service) -> StartedRollout:
    """Roll ``version`` of ``model_name`` out to ``node_group`` (the Deploy button)."""
    record = await service.deploy(
        body.model_name,
        body.version,
        body.node_group,
        trigger="http",
        reason=body.reason or "deployed on request",
        pod_annotations=body.pod_annotations,
        canary_weight=body.canary_weight,
    )
    return _started(record)


@router.get("")
async def list_deployments(service: Service) -> dict[str, list[DeploymentOut]]:
    running = _in_flight(service)
    states = await service.states()
    return {
        "deployments": [DeploymentOut.of(s, service, running.get((s.model_name, s.node_group))) for s in states],
    }


@router.get("/{model_name}/{node_group}", responses=UNKNOWN)
async def get_deployment(model_name: str, node_group: str, service: Service) -> DeploymentDetail:
    state, rollouts = await service.describe(model_name, node_group)
    current = DeploymentOut.of(state, service, _in_flight(service).get((model_name, node_group)))
    return DeploymentDetail(**current.model_dump(), rollouts=[RolloutOut.of(r) for r in rollouts])


@router.delete("/{model_name}/{node_group}", responses={**UNKNOWN, **TARGET_FAILED})
async def delete_deployment(model_name: str, node_group: str, service: Service) -> DeploymentOut:
    """Stop serving the model in the node group (the Delete button)."""
    return DeploymentOut.of(await service.delete(model_name, node_group), service)


@router.post(
    "/{model_name}/{node_group}/rollback",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**UNKNOWN, **NOTHING_TO_ROLL_BACK, **TARGET_FAILED},
)
async def rollback(
    model_name: str, node_group: str, service: Service, body: RollbackRequest | None = None
) -> StartedRollout:
    """Deploy the version that served before the current one."""
    reason = body.reason if body is not None else ""
    return _started(await service.rollback(model_name, node_group, reason=reason))


@router.get("/{model_name}/{node_group}/canary", responses=NO_CANARY)
async def get_canary(model_name: str, node_group: str, service: Service) -> CanaryOut:
    """The newest canary of the model in the group: its stage, and while it runs, its answers against the stable
    version's."""
    canary, stats = await service.canary(model_name, node_group)
    return CanaryOut.of(canary, stats, service)


@router.post(
    "/{model_name}/{node_group}/canary/abort",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**UNKNOWN, **NOT_DECIDABLE},
)
async def abort_canary(
    model_name: str, node_group: str, service: Service, body: CanaryDecision | None = None
) -> CanaryOut:
    """Stop the canary (deploying or watching): it is removed, the stable version keeps serving."""
    reason = body.reason if body is not None else ""
    canary = await service.abort_canary(model_name, node_group, reason=reason)
    return CanaryOut.of(canary, None, service)


@router.post(
    "/{model_name}/{node_group}/canary/complete",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**UNKNOWN, **NOT_DECIDABLE},
)
async def complete_canary(
    model_name: str, node_group: str, service: Service, body: CanaryDecision | None = None
) -> CanaryOut:
    """Pass the watched canary now: the candidate rolls out to the group."""
    reason = body.reason if body is not None else ""
    canary = await service.complete_canary(model_name, node_group, reason=reason)
    return CanaryOut.of(canary, None, service)
