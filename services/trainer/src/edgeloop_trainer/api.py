"""HTTP: ask for a training, follow its runs (``/v1/trainings``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from edgeloop_common.events import TrainingReason
from edgeloop_common.http_errors import ServiceNotRunningError, StatusForError
from edgeloop_common.topics import ID_PATTERN
from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from edgeloop_trainer.ports import Run, RunNotFoundError, RunState
from edgeloop_trainer.service import TrainerService

router = APIRouter(prefix="/v1/trainings", tags=["trainings"])

# Domain errors -> HTTP status, in one place (installed by app.py).
STATUS_FOR_ERROR: StatusForError = {
    RunNotFoundError: status.HTTP_404_NOT_FOUND,
}


class TrainingRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(
        pattern=f"^{ID_PATTERN}$", description="Letters, digits, '_', '.', '-'; at most 64 characters."
    )
    reason: TrainingReason = "manual"
    requested_by: str = Field("anonymous", min_length=1, max_length=200)
    detail: str = Field("", max_length=2000)


class TrainingAccepted(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    run_id: str
    model_name: str
    state: RunState
    coalesced: bool = Field(description="True when the request joined a run already queued for the model.")


class RequestOut(BaseModel):
    request_id: str
    reason: TrainingReason
    requested_by: str
    detail: str
    requested_at: datetime


class RunOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    run_id: str
    model_name: str
    state: RunState
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict[str, Any] = Field(description="stage, fraction (0..1), epoch, epochs, message")
    requests: list[RequestOut] = Field(description="The requests this run serves (coalesced ones included).")
    snapshot_id: str | None
    candidate_version: int | None
    result: dict[str, Any] | None = Field(
        description="version, artifact_uri, metrics, promotion {promoted, decision, previous_version}, ..."
    )
    error: str | None

    @classmethod
    def of(cls, run: Run) -> RunOut:
        return cls(
            run_id=run.run_id,
            model_name=run.model_name,
            state=run.state,
            attempt=run.attempt,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            progress=run.progress,
            requests=[
                RequestOut(
                    request_id=r.request_id,
                    reason=r.reason,
                    requested_by=r.requested_by,
                    detail=r.detail,
                    requested_at=r.requested_at,
                )
                for r in run.requests
            ],
            snapshot_id=run.snapshot_id,
            candidate_version=run.candidate_version,
            result=run.result,
            error=run.error,
        )


class RunList(BaseModel):
    trainings: list[RunOut]


def get_service(request: Request) -> TrainerService:
    service: TrainerService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise ServiceNotRunningError("the trainer is starting or stopping")
    return service


ServiceDep = Annotated[TrainerService, Depends(get_service)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainingAccepted,
    summary="Ask for a training of a model; answers at once with the run that will serve the request",
)
async def request_training(body: TrainingRequestIn, service: ServiceDep, response: Response) -> TrainingAccepted:
    enqueued = await service.request_by_hand(body.model_name, body.reason, body.requested_by, body.detail)
    run = await service.get_run(enqueued.run_id)
    response.headers["Location"] = f"/v1/trainings/{enqueued.run_id}"
    return TrainingAccepted(
        run_id=enqueued.run_id,
        model_name=body.model_name,
        state=run.state if run else "queued",
        coalesced=enqueued.coalesced,
    )


@router.get("", response_model=RunList, summary="Training runs, newest first")
async def list_trainings(
    service: ServiceDep,
    model_name: Annotated[str | None, Query(max_length=200)] = None,
    state: Annotated[RunState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunList:
    runs = await service.list_runs(model_name=model_name, state=state, limit=limit)
    return RunList(trainings=[RunOut.of(run) for run in runs])


@router.get("/{run_id}", response_model=RunOut, responses={404: {"description": "No such run"}})
async def get_training(run_id: str, service: ServiceDep) -> RunOut:
    return RunOut.of(await service.run(run_id))
