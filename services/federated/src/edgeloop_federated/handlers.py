"""Thin: an event in -> the service. :data:`SUBSCRIPTIONS` is the federated service's table.

``TrainingRequested`` for the telemetry model (a drift, a person) starts a federated training; requests for other
models are the image trainer's and are skipped here.
"""

from __future__ import annotations

import logging

from edgeloop_common.bus import EventContext
from edgeloop_common.events import TrainingRequested
from edgeloop_common.subscriptions import ConsumerGroup

from edgeloop_federated.service import FederatedService

log = logging.getLogger(__name__)


class FederatedHandlers:
    def __init__(self, service: FederatedService) -> None:
        self.service = service

    async def on_training_requested(self, event: TrainingRequested, context: EventContext) -> None:
        if not self.service.handles(event.model_name):
            return  # another model: the image trainer's
        training, joined = await self.service.request(
            self.service.spec_for(event.model_name),
            reason=event.reason,
            requested_by=event.requested_by,
            detail=event.detail,
        )
        log.info(
            "training requested for %s (%s): %s %s",
            event.model_name,
            event.reason,
            "joined" if joined else "queued",
            training.training_id,
        )


SUBSCRIPTIONS = (ConsumerGroup("federated", {TrainingRequested: FederatedHandlers.on_training_requested}),)
