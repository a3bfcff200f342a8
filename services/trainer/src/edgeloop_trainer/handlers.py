"""Thin: an event in -> the service -> events out."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable

from edgeloop_common.bus import EventContext, PermanentError
from edgeloop_common.events import SampleLabeled, TrainingRequested
from edgeloop_common.topics import ID_PATTERN

from edgeloop_trainer.ports import TrainingRequest
from edgeloop_trainer.service import TrainerService

TRAINING_GROUP = "trainer"
LABELS_GROUP = "trainer-labels"

_MODEL_NAME = re.compile(f"^{ID_PATTERN}$")


def request_id_of(event_id: str) -> str:
    """The event id keys the request (a redelivery finds its row); one too long for the column is hashed."""
    return event_id if len(event_id) <= 200 else "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def training_requested_handler(
    service: TrainerService,
) -> Callable[[TrainingRequested, EventContext], Awaitable[None]]:
    """Returns once the request is in the trainings table: the bus commits, the training runs later."""

    async def handle(event: TrainingRequested, context: EventContext) -> None:
        if not _MODEL_NAME.match(event.model_name):
            raise PermanentError(
                f"model name {event.model_name!r} must be 1-64 letters, digits, '_', '.' or '-' (it is part of paths)"
            )
        await service.request_training(
            TrainingRequest(
                request_id=request_id_of(context.event_id),
                model_name=event.model_name,
                reason=event.reason,
                requested_by=event.requested_by,
                detail=event.detail,
                requested_at=event.requested_at,
            )
        )

    return handle


def sample_labeled_handler(service: TrainerService) -> Callable[[SampleLabeled, EventContext], Awaitable[None]]:
    async def handle(event: SampleLabeled, context: EventContext) -> None:
        await service.count_label()

    return handle
