"""The registry's HTTP routes (``/v1/models``). Domain errors answer the status of :data:`STATUS_FOR_ERROR`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from edgeloop_common.http_errors import ServiceNotRunningError, StatusForError
from edgeloop_common.topics import ID_PATTERN
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from edgeloop_registry.metrics import RegistryMetrics
from edgeloop_registry.schemas import (
    AliasMoveIn,
    AliasMoveOut,
    AliasOut,
    ErrorOut,
    ModelIn,
    ModelOut,
    PromotionIn,
    PromotionOut,
    RollbackIn,
    StatusIn,
    VersionIn,
    VersionOut,
    VersionStatus,
    VersionSummaryOut,
)
from edgeloop_registry.service import MAX_VERSION_NUMBER, ConflictError, NotFoundError, RegistryService

router = APIRouter(prefix="/v1/models")

# Domain errors -> HTTP status, in one place (installed by app.py).
STATUS_FOR_ERROR: StatusForError = {
    NotFoundError: status.HTTP_404_NOT_FOUND,
    ConflictError: status.HTTP_409_CONFLICT,
}

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "Unknown model or version."}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorOut, "description": "Conflicts with the state."}}


def get_service(request: Request) -> RegistryService:
    service: RegistryService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise ServiceNotRunningError("the registry is starting or stopping")
    return service


def get_metrics(request: Request) -> RegistryMetrics:
    metrics: RegistryMetrics = request.app.state.metrics
    return metrics


Service = Annotated[RegistryService, Depends(get_service)]
Metrics = Annotated[RegistryMetrics, Depends(get_metrics)]
ModelName = Annotated[str, Path(description="Model name.")]
Version = Annotated[int, Path(ge=1, le=MAX_VERSION_NUMBER, description=f"Version number, 1..{MAX_VERSION_NUMBER}.")]
NEW_NAME = f"^{ID_PATTERN}$"
AliasName = Annotated[str, Path(pattern=NEW_NAME, description="Alias name, e.g. `production` or `candidate`.")]


# -- models -------------------------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    tags=["models"],
    summary="Create a model",
    responses=CONFLICT,
)
async def create_model(body: ModelIn, service: Service, response: Response) -> ModelOut:
    """Create an empty model. 409 if a model of that name exists."""
    model = await asyncio.to_thread(service.create_model, body.name, body.description)
    response.headers["location"] = f"/v1/models/{model.name}"
    return ModelOut.of(model)


@router.get("", response_model=list[ModelOut], tags=["models"], summary="List models")
async def list_models(service: Service) -> list[ModelOut]:
    """Every model with its latest and its model-wide production version."""
    return [ModelOut.of(model) for model in await asyncio.to_thread(service.list_models)]


@router.get("/{name}", response_model=ModelOut, tags=["models"], summary="Get a model", responses=NOT_FOUND)
async def get_model(name: ModelName, service: Service) -> ModelOut:
    return ModelOut.of(await asyncio.to_thread(service.get_model, name))


# -- versions -----------------------------------------------------------------------------------------------------


@router.post(
    "/{name}/versions",
    status_code=status.HTTP_201_CREATED,
    response_model=VersionOut,
    tags=["versions"],
    summary="Register a version",
    responses={**CONFLICT, 422: {"description": "The body is not a valid version."}},
)
async def register_version(
    name: Annotated[str, Path(pattern=NEW_NAME, description="Model name; the model is created if missing.")],
    body: VersionIn,
    service: Service,
    metrics: Metrics,
    response: Response,
) -> VersionOut:
    """Register a fully exported version (status `ready`) with its metrics, lineage and reference statistics.
    `version` null takes the next integer; an existing number is 409. Announces ModelRegistered (outbox)."""
    version = await asyncio.to_thread(service.register_version, name, body.to_new_version())
    metrics.versions_registered.inc()
    response.headers["location"] = f"/v1/models/{name}/versions/{version.version}"
    return VersionOut.of(version)


@router.get(
    "/{name}/versions",
    response_model=list[VersionSummaryOut],
    tags=["versions"],
    summary="List versions",
    responses=NOT_FOUND,
)
async def list_versions(
    name: ModelName,
    service: Service,
    status_filter: Annotated[VersionStatus | None, Query(alias="status", description="Only this status.")] = None,
) -> list[VersionSummaryOut]:
    """Versions in number order, without their reference statistics (see the single version)."""
    versions = await asyncio.to_thread(service.list_versions, name, status_filter)
    return [VersionSummaryOut.of(version) for version in versions]


@router.get(
    "/{name}/versions/{version}",
    response_model=VersionOut,
    tags=["versions"],
    summary="Get a version",
    responses=NOT_FOUND,
)
async def get_version(name: ModelName, version: Version, service: Service) -> VersionOut:
    """One version with everything, reference statistics included (the drift service reads them here)."""
    return VersionOut.of(await asyncio.to_thread(service.get_version, name, version))


@router.patch(
    "/{name}/versions/{version}",
    response_model=VersionOut,
    tags=["versions"],
    summary="Change a version's status",
    responses={**NOT_FOUND, **CONFLICT},
)
async def set_version_status(name: ModelName, version: Version, body: StatusIn, service: Service) -> VersionOut:
    """registering → ready|failed|archived, ready → failed|archived, failed → archived, archived → ready.
    A version an alias points at cannot leave `ready` (409)."""
    return VersionOut.of(await asyncio.to_thread(service.set_version_status, name, version, body.status))


# -- aliases ------------------------------------------------------------------------------------------------------


@router.get(
    "/{name}/aliases", response_model=list[AliasOut], tags=["aliases"], summary="List aliases", responses=NOT_FOUND
)
async def list_aliases(name: ModelName, service: Service) -> list[AliasOut]:
    """Every alias of the model, model-wide (`node_group` null) and per node group."""
    return [AliasOut.of(alias) for alias in await asyncio.to_thread(service.list_aliases, name)]


@router.put(
    "/{name}/aliases/{alias}",
    response_model=AliasOut,
    tags=["aliases"],
    summary="Move an alias",
    responses={**NOT_FOUND, **CONFLICT},
)
async def move_alias(name: ModelName, alias: AliasName, body: AliasMoveIn, service: Service) -> AliasOut:
    """Point the alias at a ready version, atomically, recording who, why and when. No policy: moving `production`
    this way is a person's decision and announces ModelPromoted. Moving it where it already is changes nothing."""
    moved = await asyncio.to_thread(
        service.move_alias, name, alias, body.version, node_group=body.node_group, reason=body.reason, actor=body.actor
    )
    return AliasOut.of(moved)


@router.get(
    "/{name}/aliases/{alias}/history",
    response_model=list[AliasMoveOut],
    tags=["aliases"],
    summary="History of an alias",
    responses=NOT_FOUND,
)
async def alias_history(
    name: ModelName,
    alias: AliasName,
    service: Service,
    node_group: Annotated[
        str | None, Query(pattern=NEW_NAME, description="Node group; omitted: the model-wide alias.")
    ] = None,
) -> list[AliasMoveOut]:
    """Every move of the alias, newest first."""
    moves = await asyncio.to_thread(service.alias_history, name, alias, node_group)
    return [AliasMoveOut.of(move) for move in moves]


# -- promotion ----------------------------------------------------------------------------------------------------


@router.post(
    "/{name}/promotions",
    response_model=PromotionOut,
    tags=["promotion"],
    summary="Promote a version to production (policy decides)",
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "The version is not ready."}},
)
async def promote(name: ModelName, body: PromotionIn, service: Service, metrics: Metrics) -> PromotionOut:
    """Promote when there is no production version, or when the candidate's accuracy is at least production's on
    the same evaluation set plus the margin (`EDGELOOP_REGISTRY_PROMOTION_MARGIN`). A refusal is 200 with
    `promoted: false` and the reason. `force` skips the policy. A promotion announces ModelPromoted."""
    result = await asyncio.to_thread(
        service.promote,
        name,
        body.version,
        node_group=body.node_group,
        reason=body.reason,
        actor=body.actor,
        force=body.force,
    )
    metrics.promotions.labels(outcome=_outcome(result.promoted, result.previous_version, body)).inc()
    return PromotionOut.of(result)


@router.post(
    "/{name}/rollback",
    response_model=PromotionOut,
    tags=["promotion"],
    summary="Roll production back",
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "Nothing to roll back to."}},
)
async def rollback(name: ModelName, body: RollbackIn, service: Service, metrics: Metrics) -> PromotionOut:
    """Move `production` back to the version it had before the current one (undoing one promotion per call), or to
    `to_version`, with a reason. Announces ModelPromoted."""
    result = await asyncio.to_thread(
        service.rollback,
        name,
        node_group=body.node_group,
        reason=body.reason,
        actor=body.actor,
        to_version=body.to_version,
    )
    metrics.promotions.labels(outcome="rolled_back").inc()
    return PromotionOut.of(result)


def _outcome(promoted: bool, previous: int | None, body: PromotionIn) -> str:
    if promoted:
        return "forced" if body.force else "promoted"
    return "unchanged" if previous == body.version else "refused"
