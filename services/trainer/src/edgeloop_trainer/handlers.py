"""Thin: an event in -> the service -> events out.

:data:`SUBSCRIPTIONS` is the trainer's table: which consumer group handles which event with which handler.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable

from edgeloop_common.bus import EventContext, PermanentError
from edgeloop_common.events import SampleLabeled, TrainingRequested
from edgeloop_common.subscriptions import ConsumerGroup
from edgeloop_common.topics import ID_PATTERN

from edgeloop_trainer.ports import TrainingRequest
from edgeloop_trainer.service import TrainerService

_MODEL_NAME = re.compile(f"^{ID_PATTERN}$")
log = logging.getLogger(__name__)


def stored_event_id(event_id: str) -> str:
    """An event id as the trainer's tables key it (a training request, a counted label), so a redelivery finds its
    row; one too long for the column (200) is hashed."""
    return event_id if len(event_id) <= 200 else "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


class TrainerHandlers:
    def __init__(self, service: TrainerService, *, not_trained: Iterable[str] = ()) -> None:
        self.service = service
        self.not_trained = frozenset(not_trained)

    async def on_training_requested(self, event: TrainingRequested, context: EventContext) -> None:
        """Returns once the request is in the trainings table: the bus commits, the training runs later."""
        if event.model_name in self.not_trained:  # another service trains it (the failure model: federated)
            self.service.metrics.requests_ignored.inc()
            log.info("training request for %s (%s) is not for this trainer; skipped", event.model_name, event.reason)
            return
        if not _MODEL_NAME.match(event.model_name):
            raise PermanentError(
                f"model name {event.model_name!r} must be 1-64 letters, digits, '_', '.' or '-' (it is part of paths)"
            )
        await self.service.request_training(
            TrainingRequest(
                request_id=stored_event_id(context.event_id),
                model_name=event.model_name,
                reason=event.reason,
                requested_by=event.requested_by,
                detail=event.detail,
                requested_at=event.requested_at,
            )
        )

    async def on_sample_labeled(self, event: SampleLabeled, context: EventContext) -> None:
        await self.service.count_label(stored_event_id(context.event_id))


SUBSCRIPTIONS = (
    ConsumerGroup("trainer", {TrainingRequested: TrainerHandlers.on_training_requested}),
    ConsumerGroup("trainer-labels", {SampleLabeled: TrainerHandlers.on_sample_labeled}),
)
