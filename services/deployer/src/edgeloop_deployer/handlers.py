"""Thin: ModelPromoted in -> rollouts started (their progress goes out as DeploymentUpdated); InferenceCompleted in ->
the answers of a node group whose canary is watched, recorded.

:data:`SUBSCRIPTIONS` is the deployer's table: which consumer group handles which event with which handler.
"""

from __future__ import annotations

from edgeloop_common.bus import EventContext, PermanentError
from edgeloop_common.events import InferenceCompleted, ModelPromoted
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

    async def on_inference_completed(self, event: InferenceCompleted, context: EventContext) -> None:
        """An answer; kept only while a canary of its model watches its site (docs/deployer.md, "Canary rollouts")."""
        await self.service.on_inference(event)


SUBSCRIPTIONS = (
    ConsumerGroup("deployer", {ModelPromoted: DeployerHandlers.on_model_promoted}),
    # A group of its own: answers are many, and a backlog of them must not hold promotions up.
    ConsumerGroup("deployer-canary", {InferenceCompleted: DeployerHandlers.on_inference_completed}),
)
