"""Thin: ModelPromoted in -> rollouts started (their progress goes out as DeploymentUpdated).

:data:`SUBSCRIPTIONS` is the deployer's table: which consumer group handles which event with which handler.
"""

from __future__ import annotations

from edgeloop_common.bus import EventContext, PermanentError
from edgeloop_common.events import ModelPromoted
from edgeloop_common.subscriptions import ConsumerGroup

from edgeloop_deployer.service import InvalidRequestError, RolloutService, UnknownNodeGroupError


class DeployerHandlers:
    def __init__(self, service: RolloutService) -> None:
        self.service = service

    async def on_model_promoted(self, event: ModelPromoted, context: EventContext) -> None:
        """Starts the rollouts and returns: a rollout can take minutes, and its state is in the deployer's database
        (a restart resumes it), so the event is done once the rollouts are recorded."""
        try:
            await self.service.on_promotion(event)
        except (UnknownNodeGroupError, InvalidRequestError) as exc:  # no retry makes these deployable
            raise PermanentError(str(exc)) from exc


SUBSCRIPTIONS = (ConsumerGroup("deployer", {ModelPromoted: DeployerHandlers.on_model_promoted}),)
