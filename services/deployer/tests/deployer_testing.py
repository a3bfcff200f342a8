"""Helpers of the deployer tests: a scripted target, settings, waiting, and the events a consumer would see."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import DeploymentUpdated, ModelPromoted
from edgeloop_common.settings import CommonSettings
from edgeloop_deployer.service import RolloutObservation, TargetError, WorkloadPlan
from edgeloop_deployer.settings import Settings

from tests import helpers

Outcome = Literal["ready", "never", "failed", "refused"]


@dataclass
class ScriptedTarget:
    """A target whose versions become ready after ``looks_until_ready`` looks, never, fail, or are refused."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    looks_until_ready: int = 2
    name: str = "scripted"
    rolls_back: bool = True
    supports_canary: bool = True
    canary_outcomes: dict[int, Outcome] = field(default_factory=dict)  # a canary's, where it differs
    applied: list[WorkloadPlan] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    canaries_deleted: list[tuple[str, str]] = field(default_factory=list)
    _looks: dict[tuple[str, str, int], int] = field(default_factory=dict)

    async def apply(self, plan: WorkloadPlan) -> None:
        if self._outcome(plan) == "refused":
            raise TargetError(f"version {plan.version} refused by the scripted target")
        self.applied.append(plan)
        self._looks[(plan.model_name, plan.node_group, plan.version)] = 0

    async def observe(self, plan: WorkloadPlan) -> RolloutObservation:
        key = (plan.model_name, plan.node_group, plan.version)
        self._looks[key] = self._looks.get(key, 0) + 1
        outcome = self._outcome(plan)
        if outcome == "failed":
            return RolloutObservation("failed", "ProgressDeadlineExceeded (scripted)")
        if outcome == "ready" and self._looks[key] >= self.looks_until_ready:
            return RolloutObservation("ready", f"version {plan.version} ready")
        return RolloutObservation("progressing", f"look {self._looks[key]} at version {plan.version}")

    async def delete(self, model_name: str, node_group: str) -> bool:
        self.deleted.append((model_name, node_group))
        return any(p.model_name == model_name and p.node_group == node_group for p in self.applied)

    def endpoint(self, model_name: str, node_group: str) -> str:
        return f"http://{node_group}.scripted.test:8501"

    async def delete_canary(self, model_name: str, node_group: str) -> bool:
        self.canaries_deleted.append((model_name, node_group))
        return True

    def canary_endpoint(self, model_name: str, node_group: str) -> str:
        return f"http://{node_group}-canary.scripted.test:8501"

    def _outcome(self, plan: WorkloadPlan) -> Outcome:
        if plan.canary and plan.version in self.canary_outcomes:
            return self.canary_outcomes[plan.version]
        return self.outcomes.get(plan.version, "ready")

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def versions_applied(self, node_group: str = "site-a") -> list[int]:
        return [plan.version for plan in self.applied if plan.node_group == node_group and not plan.canary]

    def canaries_applied(self, node_group: str = "site-a") -> list[int]:
        return [plan.version for plan in self.applied if plan.node_group == node_group and plan.canary]


def standalone_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "common": CommonSettings(mode="standalone", data_dir=data_dir),
        "rollout_timeout_s": 2.0,
        "poll_interval_s": 0.02,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def promotion(
    version: int, *, model: str = "catdog", group: str | None = None, alias: str = "production"
) -> ModelPromoted:
    return ModelPromoted(
        model_name=model,
        version=version,
        alias=alias,
        node_group=group,
        reason="beats production by 4 points",
        promoted_by="registry",
    )


def updates(bus: InProcessBus, *, group: str | None = None) -> list[DeploymentUpdated]:
    events = [event for event in bus.events_of(DeploymentUpdated) if isinstance(event, DeploymentUpdated)]
    return [event for event in events if group is None or event.node_group == group]


def phases(bus: InProcessBus, group: str) -> list[tuple[str, int | None, int | None]]:
    return [(e.phase, e.desired_version, e.actual_version) for e in updates(bus, group=group)]


eventually = partial(helpers.eventually, timeout_s=30.0)  # a rollout takes longer than the default allows


def final_update(bus: InProcessBus, group: str) -> DeploymentUpdated | None:
    """The last DeploymentUpdated of a group if it ends a rollout (ready, failed, rolled_back, deleted)."""
    events = updates(bus, group=group)
    if events and events[-1].phase in ("ready", "failed", "rolled_back", "deleted"):
        return events[-1]
    return None
