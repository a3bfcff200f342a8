"""What the trainer's logic needs from the outside world, and the records it passes around.

The adapters (registry and ingest over HTTP, the snapshot folder, the trainings
table, the Keras engine) implement these protocols; the unit tests use
in-memory fakes of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from edgeloop_common.events import TrainingReason, TrainingRequested

# The registry's client types live with its client in libs/common (shared with the federated service); named
# here too, as the ports this service's logic is written against.
from edgeloop_common.registry_client import PromotionDecision as PromotionDecision
from edgeloop_common.registry_client import RegisteredVersion as RegisteredVersion
from edgeloop_common.registry_client import RegistryError as RegistryError
from edgeloop_common.registry_client import RegistryUnavailableError as RegistryUnavailableError

from edgeloop_trainer.snapshot import Snapshot, SourceItem

RunState = Literal["queued", "running", "succeeded", "failed"]
Stage = Literal["queued", "snapshot", "training", "evaluating", "exporting", "registering", "promoting", "done"]


# -- errors -------------------------------------------------------------------


class SamplesUnavailableError(Exception):
    """Ingest's sample API could not be reached or answered with an error."""


class SampleImageMissingError(Exception):
    """A labeled sample's image is gone (ingest answered 404): the sample is left out of the snapshot."""


class TrainingCancelledError(Exception):
    """The trainer is stopping: the run is abandoned and its requests are queued again."""


class RunNotFoundError(Exception):
    """No training run has that id."""


# -- records --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRequest:
    request_id: str
    model_name: str
    reason: TrainingReason
    requested_by: str
    detail: str
    requested_at: datetime


@dataclass(frozen=True)
class Progress:
    stage: Stage
    fraction: float = 0.0
    epoch: int = 0
    epochs: int = 0
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "fraction": round(self.fraction, 4),
            "epoch": self.epoch,
            "epochs": self.epochs,
            "message": self.message,
        }


@dataclass(frozen=True)
class Run:
    run_id: str
    model_name: str
    state: RunState
    attempt: int
    created_at: datetime
    requests: tuple[TrainingRequest, ...] = ()
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    snapshot_id: str | None = None
    candidate_version: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Enqueued:
    run_id: str
    coalesced: bool  # joined a run already queued for the model
    duplicate: bool  # this request id was recorded before (a redelivered event)


@dataclass(frozen=True)
class LabelTrainingRequest:
    """A training the label count asked for (``labels`` new labels), recorded with the count's reset and published
    as ``TrainingRequested`` under ``event_id`` until it is known to be out."""

    event_id: str
    model_name: str
    labels: int
    requested_at: datetime


@dataclass(frozen=True)
class LabeledSample:
    sample_id: str
    label: str
    sha256: str
    blob_uri: str
    image_url: str


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class TrainingJob:
    """Everything the engine needs for one candidate; ``image_path`` maps a sha256 to its cached bytes."""

    run_id: str
    model_name: str
    snapshot: Snapshot
    image_path: Callable[[str], Path]
    min_version: int
    warm_start_from: RegisteredVersion | None
    baseline: RegisteredVersion | None
    parent_snapshot: Snapshot | None = None  # what warm_start_from was trained on, when known: tells what is new


@dataclass(frozen=True)
class Candidate:
    """An exported, fully written version that is not registered yet."""

    model_name: str
    version: int
    path: Path
    artifact_uri: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    reference_stats: dict[str, Any]
    parameters: dict[str, Any]
    warm_started: bool
    train_started_at: datetime
    train_duration_s: float


# -- ports ----------------------------------------------------------------------


class RunStore(Protocol):
    """The trainings table. Blocking calls: the service runs them in a thread."""

    def enqueue(self, request: TrainingRequest, *, attempt: int = 1) -> Enqueued:
        """Record the request durably: in the model's queued run, or in a new queued run when there is none."""
        ...

    def start_next(self, model_name: str, now: datetime) -> Run | None:
        """Move the model's queued run to ``running`` and return it; None when nothing is queued."""
        ...

    def update(self, run_id: str, **changes: Any) -> None: ...

    def get(self, run_id: str) -> Run | None: ...

    def find(self, *, model_name: str | None = None, state: RunState | None = None, limit: int = 50) -> list[Run]: ...

    def queued_models(self) -> list[str]: ...

    def count_label(
        self,
        model_name: str,
        label_event_id: str,
        *,
        every: int,
        request_id: str,
        now: datetime,
        forget_before: datetime,
    ) -> bool:
        """Count label event ``label_event_id`` for the model, once: False when it was counted before.

        In the same transaction, when the count reaches ``every``: reset it, record a
        :class:`LabelTrainingRequest` under ``request_id``, and forget the ids counted before ``forget_before``.
        """
        ...

    def labels_since_request(self, model_name: str) -> int: ...

    def label_requests(self) -> list[LabelTrainingRequest]:
        """The requests recorded by :meth:`count_label` and not yet marked published, oldest first (at one time, by
        model name)."""
        ...

    def label_request_published(self, event_id: str) -> None: ...

    def reset_labels(self, model_name: str) -> None:
        """The count restarts (a run's snapshot holds the labels counted so far)."""
        ...


class RegistryPort(Protocol):
    async def production(self, model_name: str) -> RegisteredVersion | None:
        """The model-wide ``production`` version, or None (no model, no alias)."""
        ...

    async def latest_version(self, model_name: str) -> int | None: ...

    async def get_version(self, model_name: str, version: int) -> RegisteredVersion | None: ...

    async def register(self, model_name: str, body: dict[str, Any]) -> RegisteredVersion: ...

    async def promote(self, model_name: str, version: int, *, reason: str, actor: str) -> PromotionDecision: ...


class SamplesPort(Protocol):
    async def labeled_samples(self) -> list[LabeledSample]: ...

    async def read_image(self, sample: LabeledSample) -> bytes: ...


class SnapshotStorePort(Protocol):
    """Content-addressed image cache and the stored manifests. Blocking calls."""

    def seed_items(self, seed_dir: Path) -> list[SourceItem]:
        """Every image of ``seed_dir/<class>/``, hashed and cached."""
        ...

    def has_image(self, sha256: str) -> bool: ...

    def put_image(self, data: bytes) -> str: ...

    def image_path(self, sha256: str) -> Path: ...

    def save(self, snapshot: Snapshot) -> Path: ...

    def load(self, snapshot_id: str) -> Snapshot: ...


class TrainingEngine(Protocol):
    """Trains, evaluates and exports one candidate. Blocking: the service runs it in a worker thread."""

    def train(self, job: TrainingJob, progress: ProgressCallback) -> Candidate: ...

    def discard(self, model_name: str, version: int) -> bool:
        """Remove an exported but unregistered version; True when something was removed."""
        ...

    def remove_stale_staging(self) -> list[Path]:
        """Remove hidden half-written export folders left by a crash."""
        ...


class Publisher(Protocol):
    """Publishes an event durably (the bus); ``event_id`` fixes its id (an HTTP request's id)."""

    def __call__(self, event: TrainingRequested, event_id: str | None = None) -> Awaitable[object]: ...
