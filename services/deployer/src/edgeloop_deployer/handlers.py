"""Thin: ModelPromoted in -> rollouts started (their progress goes out as DeploymentUpdated)."""

from __future__ import annotations

from edgeloop_common.bus import EventContext, PermanentError
from edgeloop_common.events import ModelPromoted

from edgeloop_deployer.service import InvalidRequestError, RolloutService, UnknownNodeGroupError


class ModelPromotedHandler:
    """Starts the rollouts and returns: a rollout can take minutes, and its state is in the deployer's database
    (a restart resumes it), so the event is done once the rollouts are recorded."""

    def __init__(self, service: RolloutService) -> None:
        self.service = service

    async def __call__(self, event: ModelPromoted, context: EventContext) -> None:
        try:
            await self.service.on_promotion(event)
        except (UnknownNodeGroupError, InvalidRequestError) as exc:
            raise PermanentError(str(exc)) from exc
