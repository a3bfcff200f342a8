"""``GET /v1/drift``: what the console shows — windows, latest statistics, ADWIN estimates and recent alarms."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from edgeloop_common.http_errors import ServiceNotRunningError, StatusForError
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from edgeloop_drift.service import DriftService

router = APIRouter(prefix="/v1", tags=["drift"])

# Domain errors -> HTTP status, in one place (installed by app.py). The drift API only reads: none to map yet.
STATUS_FOR_ERROR: StatusForError = {}


class StatisticView(BaseModel):
    statistic: float
    threshold: float
    drifted: bool
    p_value: float | None = None


class ReferenceView(BaseModel):
    source: Literal["registry", "first_window"]
    size: int = Field(description="Samples the reference was computed from.")
    features: list[str] = Field(description="Features the reference has enough values of to be tested.")


class StreamView(BaseModel):
    model_name: str
    model_version: int
    site_id: str
    window_size: int
    window_fill: int
    samples_seen: int
    checks: int
    last_check_at: datetime | None
    reference: ReferenceView | None = Field(description="None until the registry answers or the first window fills.")
    statistics: dict[str, dict[str, StatisticView]] = Field(
        description="Per feature, per test (psi, ks): the latest check."
    )


class AccuracyView(BaseModel):
    model_name: str
    site_id: str
    model_version: int
    labels_seen: int
    accuracy_estimate: float = Field(description="ADWIN's mean correctness over its current window.")
    accuracy_overall: float | None
    window_size: int
    drops_detected: int


class AlarmView(BaseModel):
    model_name: str
    model_version: int
    site_id: str
    test: Literal["psi", "ks", "adwin"]
    feature: str
    statistic: float
    threshold: float
    window_size: int
    reference_size: int | None = None
    p_value: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    detected_at: datetime
    training_requested: bool


class SettingsView(BaseModel):
    window_size: int
    check_every: int
    psi_threshold: float
    ks_alpha: float
    adwin_delta: float
    debounce_s: float
    request_training: bool


class DriftView(BaseModel):
    settings: SettingsView
    streams: list[StreamView] = Field(description="Per (model, version, site), most recently updated first.")
    accuracy: list[AccuracyView] = Field(description="Per (model, site): ADWIN on labeled correctness.")
    alarms: list[AlarmView] = Field(description="Recent alarms, newest first (bounded history, in memory).")


def _service(request: Request) -> DriftService:
    service: DriftService | None = getattr(request.app.state, "drift", None)
    if service is None:
        raise ServiceNotRunningError("the drift service is starting or stopping")
    return service


@router.get("/drift", response_model=DriftView)
async def get_drift(
    request: Request,
    model_name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    site_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    alarms_limit: Annotated[int, Query(ge=0, le=10_000, description="Most recent alarms returned.")] = 100,
) -> DriftView:
    """Drift state per (model, version, site) and recent alarms; filter by model and site."""
    snapshot = _service(request).snapshot(model_name=model_name, site_id=site_id)
    snapshot["alarms"] = snapshot["alarms"][:alarms_limit]
    return DriftView.model_validate(snapshot)
