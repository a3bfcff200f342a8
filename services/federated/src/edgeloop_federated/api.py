"""HTTP: start a federated training, follow it round by round (``/v1/trainings``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from edgeloop_common.events import TrainingReason
from edgeloop_common.http_errors import ServiceNotRunningError, StatusForError
from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from edgeloop_federated.ports import TrainingNotFoundError
from edgeloop_federated.service import FederatedService

router = APIRouter(prefix="/v1/trainings", tags=["trainings"])

# Domain errors -> HTTP status, in one place (installed by app.py).
STATUS_FOR_ERROR: StatusForError = {
    TrainingNotFoundError: status.HTTP_404_NOT_FOUND,
    ValueError: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


class TrainingIn(BaseModel):
    """Start a federated training; unset fields take the service's settings."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    reason: TrainingReason = "manual"
    requested_by: str = Field("anonymous", min_length=1, max_length=200)
    detail: str = Field("", max_length=2000)
    rounds: int | None = Field(None, ge=1, le=1000)
    strategy: Literal["fedavg", "fedprox"] | None = None
    proximal_mu: float | None = Field(None, ge=0, le=1000)
    model_kind: Literal["logistic", "mlp"] | None = None
    local_epochs: int | None = Field(None, ge=1, le=1000)
    learning_rate: float | None = Field(None, gt=0, le=10)
    min_fit_clients: int | None = Field(None, ge=1, le=10_000)
    min_available_clients: int | None = Field(None, ge=1, le=10_000)
    round_timeout_s: float | None = Field(None, gt=0, le=86_400)
    connect_timeout_s: float | None = Field(None, gt=0, le=86_400)


class TrainingAccepted(BaseModel):
    training_id: str
    state: str
    joined: bool = Field(description="True when the request joined a training queued already with the same settings.")


def get_service(request: Request) -> FederatedService:
    service: FederatedService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise ServiceNotRunningError("the federated service is not running")
    return service


Service = Annotated[FederatedService, Depends(get_service)]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TrainingAccepted)
async def start_training(body: TrainingIn, service: Service, response: Response) -> TrainingAccepted:
    """Queue a federated training of the telemetry model; follow it with GET /v1/trainings/{id}."""
    overrides = body.model_dump(exclude={"reason", "requested_by", "detail"}, exclude_none=True)
    spec = service.spec_for(None, **overrides)
    training, joined = await service.request(
        spec, reason=body.reason, requested_by=body.requested_by, detail=body.detail
    )
    response.headers["Location"] = f"/v1/trainings/{training.training_id}"
    return TrainingAccepted(training_id=training.training_id, state=training.state, joined=joined)


@router.get("")
async def list_trainings(service: Service) -> dict[str, Any]:
    """The trainings this process ran or runs, newest first (progress per round included)."""
    return {"trainings": [training.as_dict() for training in service.list()]}


@router.get("/{training_id}")
async def get_training(training_id: str, service: Service) -> dict[str, Any]:
    """State, message, each round (sites that answered, their window counts, failures, held-out figures), result."""
    return service.get(training_id).as_dict()
