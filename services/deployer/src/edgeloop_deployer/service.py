"""The deployer's logic: desired and actual model version per (model, node group), rollouts and rollbacks.

A rollout applies one version to one node group through a :class:`DeploymentTarget`
(Kubernetes, or local model servers), looks at it until it is ready or the
timeout passes, and, if it never became ready, applies the version that served
before and says why. Every step is a :class:`DeploymentUpdated` event (with the
group's serving endpoint) and a row in the store, so the state survives a restart
and a restart knows what to roll back to.

One rollout per (model, node group) runs at a time: a newer request supersedes the
one in flight (Kubernetes itself moves to the newest spec). No I/O framework here:
the target, the store and the event publisher are ports.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

from edgeloop_common.bus.base import BusUnavailableError
from edgeloop_common.events import DeploymentPhase, DeploymentUpdated, ModelPromoted

log = logging.getLogger(__name__)

SERVICE_NAME = "deployer"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

RolloutAction = Literal["deploy", "rollback", "delete"]
RolloutTrigger = Literal["promotion", "http", "resume"]
# A rollout record's phase: the deployment phases, and "superseded" for one replaced by a newer request.
RolloutPhase = Literal["pending", "progressing", "ready", "failed", "rolled_back", "deleted", "superseded"]
ObservedState = Literal["progressing", "ready", "failed"]


class DeployerError(Exception):
    """Base of the errors the HTTP API maps to status codes."""


class InvalidRequestError(DeployerError):
    """The request can never be carried out as given (bad model name, bad version)."""


class UnknownNodeGroupError(DeployerError):
    """The node group is not one of the configured ones."""


class DeploymentNotFoundError(DeployerError):
    """Nothing is deployed for this model and node group."""


class NothingToRollBackError(DeployerError):
    """No version served before the current one."""


class TargetError(Exception):
    """The target refused or failed an operation; the message says why (shown to users)."""


@dataclass(frozen=True)
class WorkloadPlan:
    """What to make the edge of one node group serve."""

    model_name: str
    node_group: str
    version: int
    pod_annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutObservation:
    """One look at a rollout: still progressing, ready, or failed for good (``detail`` says how far / why)."""

    state: ObservedState
    detail: str


class DeploymentTarget(Protocol):
    """Where versions are rolled out: a Kubernetes namespace, or local model servers (one, or one per group)."""

    name: str
    # False where there is nothing to re-apply (one local model server serves every version at once); True where
    # applying the previous version again makes the group serve it (Kubernetes, a local server per node group).
    rolls_back: bool

    async def apply(self, plan: WorkloadPlan) -> None:
        """Make the node group serve ``plan.version`` (returns once the target accepted it). Raises TargetError."""

    async def observe(self, plan: WorkloadPlan) -> RolloutObservation:
        """How far the rollout of ``plan`` is. Raises TargetError when the target cannot be asked right now."""

    async def delete(self, model_name: str, node_group: str) -> bool:
        """Remove what serves the model in the node group; False when there was nothing."""

    def endpoint(self, model_name: str, node_group: str) -> str | None:
        """TF Serving REST base URL of the node group's model server (None where the target cannot say)."""

    async def ready(self) -> bool:
        """True when the target can be reached (and we may act on it)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class DeploymentState:
    """Desired and actual version of one model in one node group."""

    model_name: str
    node_group: str
    desired_version: int | None
    actual_version: int | None
    previous_version: int | None
    phase: DeploymentPhase
    reason: str
    updated_at: datetime


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout (or rollback, or deletion) and how it went."""

    rollout_id: str
    model_name: str
    node_group: str
    version: int | None
    action: RolloutAction
    trigger: RolloutTrigger
    phase: RolloutPhase
    detail: str
    pod_annotations: Mapping[str, str]
    started_at: datetime
    finished_at: datetime | None = None


class DeploymentStore(Protocol):
    async def get(self, model_name: str, node_group: str) -> DeploymentState | None: ...

    async def all(self) -> list[DeploymentState]: ...

    async def save(self, state: DeploymentState) -> None: ...

    async def save_rollout(self, record: RolloutRecord) -> None:
        """Insert or update (by ``rollout_id``)."""

    async def rollouts(self, model_name: str, node_group: str, *, limit: int = 20) -> list[RolloutRecord]:
        """Newest first."""

    async def last_rollout_of(
        self, model_name: str, node_group: str, version: int, *, phase: RolloutPhase | None = None
    ) -> RolloutRecord | None: ...


Publish = Callable[[DeploymentUpdated], Awaitable[object]]


class RolloutMetrics(Protocol):
    def rollout_finished(self, target: str, outcome: RolloutPhase, duration_s: float) -> None: ...

    def version_serving(self, model_name: str, node_group: str, version: int | None) -> None: ...


@dataclass(frozen=True)
class RolloutConfig:
    node_groups: tuple[str, ...]
    rollout_timeout_s: float
    poll_interval_s: float
    promotion_alias: str = "production"
    annotations_for: Callable[[int], dict[str, str]] = lambda _version: {}


def utc_now() -> datetime:
    return datetime.now(UTC)


class RolloutService:
    def __init__(
        self,
        *,
        target: DeploymentTarget,
        store: DeploymentStore,
        publish: Publish,
        config: RolloutConfig,
        metrics: RolloutMetrics | None = None,
    ) -> None:
        self.target = target
        self.store = store
        self.publish = publish
        self.config = config
        self.metrics = metrics
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._running: dict[tuple[str, str], RolloutRecord] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # --- requests ---------------------------------------------------------------------------------------------

    async def on_promotion(self, event: ModelPromoted) -> list[RolloutRecord]:
        """Roll a promotion of the configured alias out to its node group, or to every group when it names none."""
        if event.alias != self.config.promotion_alias:
            log.info("ignoring promotion of %s:%d to alias %r", event.model_name, event.version, event.alias)
            return []
        groups = [event.node_group] if event.node_group else list(self.config.node_groups)
        for group in groups:
            self._check_group(group)  # all or nothing: an unknown group refuses the whole promotion
        reason = f"promoted to {event.alias} by {event.promoted_by}: {event.reason}".strip()
        return [
            await self.deploy(event.model_name, event.version, group, trigger="promotion", reason=reason)
            for group in groups
        ]

    async def deploy(
        self,
        model_name: str,
        version: int,
        node_group: str,
        *,
        trigger: RolloutTrigger,
        reason: str = "",
        pod_annotations: Mapping[str, str] | None = None,
    ) -> RolloutRecord:
        """Start rolling ``version`` out to ``node_group``; returns at once (the rollout runs in the background)."""
        self._check_model(model_name)
        self._check_group(node_group)
        if version < 0:
            raise InvalidRequestError(f"version must be >= 0, not {version}")
        key = (model_name, node_group)
        async with self._lock(key):
            running = self._running.get(key)
            if running is not None and running.version == version and running.action != "delete":
                return running  # a redelivered request for what is already under way
            annotations = {**self.config.annotations_for(version), **(pod_annotations or {})}
            return await self._start(key, version, "deploy", trigger, reason, annotations)

    async def rollback(self, model_name: str, node_group: str, *, reason: str = "") -> RolloutRecord:
        """Deploy the version that served before the current one (as a person's rollback)."""
        self._check_group(node_group)
        key = (model_name, node_group)
        async with self._lock(key):
            state = await self.store.get(model_name, node_group)
            if state is None:
                raise DeploymentNotFoundError(f"nothing was ever deployed for {model_name} in {node_group}")
            if state.previous_version is None or state.previous_version == state.actual_version:
                raise NothingToRollBackError(
                    f"{model_name} in {node_group} has no previous version to roll back to "
                    f"(serving: {state.actual_version})"
                )
            version = state.previous_version
            annotations = await self._annotations_of_served(model_name, node_group, version)
            why = reason or f"rollback from version {state.actual_version} requested"
            return await self._start(key, version, "rollback", "http", why, annotations)

    async def delete(self, model_name: str, node_group: str, *, reason: str = "") -> DeploymentState:
        """Stop serving the model in the node group (the Delete button); waits for the target."""
        self._check_model(model_name)  # nothing with another name was ever deployed (and it may name a folder)
        self._check_group(node_group)
        key = (model_name, node_group)
        async with self._lock(key):
            await self._cancel(key)
            state = await self.store.get(model_name, node_group)
            started = utc_now()
            try:
                removed = await self.target.delete(model_name, node_group)
            except TargetError as exc:
                raise DeployerError(f"deleting {model_name} in {node_group} failed: {exc}") from exc
            if state is None and not removed:
                raise DeploymentNotFoundError(f"nothing is deployed for {model_name} in {node_group}")
            previous = state.actual_version if state is not None else None
            why = reason or "deleted on request"
            deleted = DeploymentState(model_name, node_group, None, None, previous, "deleted", why, utc_now())
            await self.store.save(deleted)
            record = RolloutRecord(
                _new_id(), model_name, node_group, None, "delete", "http", "deleted", why, {}, started, utc_now()
            )
            await self.store.save_rollout(record)
            if self.metrics is not None:
                self.metrics.version_serving(model_name, node_group, None)
            await self._announce(deleted)
            return deleted

    async def resume_unfinished(self) -> list[RolloutRecord]:
        """After a restart: start again the rollouts that were pending or progressing when the deployer stopped."""
        resumed = []
        for state in await self.store.all():
            if state.phase not in ("pending", "progressing") or state.desired_version is None:
                continue
            if state.node_group not in self.config.node_groups:
                log.warning("not resuming %s in %s: no longer a configured group", state.model_name, state.node_group)
                continue
            key = (state.model_name, state.node_group)
            async with self._lock(key):
                last = await self.store.last_rollout_of(state.model_name, state.node_group, state.desired_version)
                annotations = dict(last.pod_annotations) if last else self.config.annotations_for(state.desired_version)
                why = f"resumed after a restart ({state.reason})" if state.reason else "resumed after a restart"
                resumed.append(await self._start(key, state.desired_version, "deploy", "resume", why, annotations))
        return resumed

    # --- reading ----------------------------------------------------------------------------------------------

    async def states(self) -> list[DeploymentState]:
        return await self.store.all()

    async def describe(self, model_name: str, node_group: str) -> tuple[DeploymentState, list[RolloutRecord]]:
        self._check_group(node_group)
        state = await self.store.get(model_name, node_group)
        if state is None:
            raise DeploymentNotFoundError(f"nothing was ever deployed for {model_name} in {node_group}")
        return state, await self.store.rollouts(model_name, node_group)

    def endpoint(self, model_name: str, node_group: str) -> str | None:
        """Where the node group's model server answers (the TF Serving REST base URL)."""
        return self.target.endpoint(model_name, node_group)

    def in_flight(self) -> list[RolloutRecord]:
        return list(self._running.values())

    async def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until no rollout is running (tests, graceful shutdown)."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                await asyncio.sleep(0)  # let the done callbacks forget the finished tasks

    async def close(self) -> None:
        """Stop watching: rollouts in flight stay pending/progressing in the store and resume on the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- one rollout ------------------------------------------------------------------------------------------

    async def _start(
        self,
        key: tuple[str, str],
        version: int,
        action: RolloutAction,
        trigger: RolloutTrigger,
        reason: str,
        annotations: Mapping[str, str],
    ) -> RolloutRecord:
        await self._cancel(key, superseded_by=version)
        model_name, node_group = key
        state = await self.store.get(model_name, node_group)
        actual = state.actual_version if state else None
        previous = state.previous_version if state else None
        record = RolloutRecord(
            _new_id(), model_name, node_group, version, action, trigger, "pending", reason, dict(annotations), utc_now()
        )
        await self.store.save_rollout(record)
        pending = DeploymentState(model_name, node_group, version, actual, previous, "pending", reason, utc_now())
        await self.store.save(pending)
        await self._announce(pending)
        self._running[key] = record
        task = asyncio.create_task(self._run(record, pending), name=f"rollout:{model_name}:{node_group}:{version}")
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return record

    def _forget(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
            self._running.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("rollout %s crashed", task.get_name(), exc_info=task.exception())

    async def _cancel(self, key: tuple[str, str], *, superseded_by: int | None = None) -> None:
        task = self._tasks.get(key)
        if task is None:
            return
        record = self._running.get(key)
        task.cancel()
        await asyncio.wait([task])  # unlike `await task`, lets a cancellation of the caller itself through
        if record is not None:
            why = f"superseded by version {superseded_by}" if superseded_by is not None else "stopped by a deletion"
            await self.store.save_rollout(replace(record, phase="superseded", detail=why, finished_at=utc_now()))

    async def _run(self, record: RolloutRecord, state: DeploymentState) -> None:
        started = time.monotonic()
        plan = WorkloadPlan(record.model_name, record.node_group, record.version or 0, record.pod_annotations)
        outcome = await self._apply_and_watch(plan)
        if outcome.state == "ready":
            await self._finish(record, state, "ready", outcome.detail, served=plan.version, started=started)
            return
        why = f"version {plan.version} did not become ready: {outcome.detail}"
        previous = state.actual_version
        if previous is None or previous == plan.version:
            why += "; no previous version to roll back to"
            await self._finish(record, state, "failed", why, served=previous, started=started)
            return
        if not self.target.rolls_back:
            why += f"; version {previous} keeps serving"
            await self._finish(record, state, "failed", why, served=previous, started=started)
            return
        log.warning("%s in %s: %s; rolling back to version %d", plan.model_name, plan.node_group, why, previous)
        await self._progress(record, f"{why}; rolling back to version {previous}")
        annotations = await self._annotations_of_served(plan.model_name, plan.node_group, previous)
        back = await self._apply_and_watch(replace(plan, version=previous, pod_annotations=annotations))
        if back.state == "ready":
            why += f"; rolled back to version {previous}"
            await self._finish(record, state, "rolled_back", why, served=previous, started=started)
        else:
            why += f"; rolling back to version {previous} failed too: {back.detail}"
            await self._finish(record, state, "failed", why, served=None, started=started)

    async def _apply_and_watch(self, plan: WorkloadPlan) -> RolloutObservation:
        try:
            await self.target.apply(plan)
        except TargetError as exc:
            return RolloutObservation("failed", f"the {self.target.name} target refused it: {exc}")
        key = (plan.model_name, plan.node_group)
        record = self._running.get(key)
        if record is not None and record.phase == "pending":
            progressing = replace(record, phase="progressing", detail=f"version {plan.version} applied")
            self._running[key] = progressing
            await self.store.save_rollout(progressing)
            current = await self.store.get(plan.model_name, plan.node_group)
            if current is not None:
                moving = replace(current, phase="progressing", updated_at=utc_now())
                await self.store.save(moving)
                await self._announce(moving)
        return await self._watch(plan)

    async def _watch(self, plan: WorkloadPlan) -> RolloutObservation:
        deadline = time.monotonic() + self.config.rollout_timeout_s
        detail = "not looked at yet"
        while True:
            try:
                observation = await self.target.observe(plan)
            except TargetError as exc:  # the API may be briefly unreachable: keep looking until the deadline
                observation = RolloutObservation("progressing", f"cannot look at the rollout: {exc}")
            if observation.state != "progressing":
                return observation
            if observation.detail != detail:
                detail = observation.detail
                await self._progress(self._running.get((plan.model_name, plan.node_group)), detail)
            if time.monotonic() >= deadline:
                return RolloutObservation(
                    "failed", f"not ready within the rollout timeout of {self.config.rollout_timeout_s:g} s ({detail})"
                )
            await asyncio.sleep(self.config.poll_interval_s)

    async def _progress(self, record: RolloutRecord | None, detail: str) -> None:
        if record is None:
            return
        key = (record.model_name, record.node_group)
        current = replace(self._running.get(key, record), detail=detail)
        self._running[key] = current
        await self.store.save_rollout(current)

    async def _finish(
        self,
        record: RolloutRecord,
        state: DeploymentState,
        phase: Literal["ready", "failed", "rolled_back"],
        reason: str,
        *,
        served: int | None,
        started: float,
    ) -> None:
        key = (record.model_name, record.node_group)
        current = await self.store.get(*key) or state
        previous = current.previous_version
        if phase == "ready" and current.actual_version is not None and current.actual_version != served:
            previous = current.actual_version
        final = replace(
            current,
            desired_version=record.version,
            actual_version=served,
            previous_version=previous,
            phase=phase,
            reason=reason,
            updated_at=utc_now(),
        )
        await self.store.save(final)
        await self.store.save_rollout(
            replace(self._running.get(key, record), phase=phase, detail=reason, finished_at=utc_now())
        )
        if self.metrics is not None:
            self.metrics.rollout_finished(self.target.name, phase, time.monotonic() - started)
            self.metrics.version_serving(record.model_name, record.node_group, served)
        log.info("%s in %s: %s (%s)", record.model_name, record.node_group, phase, reason)
        await self._announce(final)

    async def _announce(self, state: DeploymentState) -> None:
        event = DeploymentUpdated(
            model_name=state.model_name,
            node_group=state.node_group,
            desired_version=state.desired_version,
            actual_version=state.actual_version,
            phase=state.phase,
            reason=state.reason,
            endpoint=self.target.endpoint(state.model_name, state.node_group),
        )
        try:
            await self.publish(event)
        except BusUnavailableError as exc:  # the state is stored (GET shows it); the rollout goes on
            log.error("could not publish DeploymentUpdated(%s) for %s: %s", state.phase, state.model_name, exc)

    async def _annotations_of_served(self, model_name: str, node_group: str, version: int) -> dict[str, str]:
        """The pod annotations ``version`` was served with (so a rollback re-applies exactly that)."""
        served = await self.store.last_rollout_of(model_name, node_group, version, phase="ready")
        return dict(served.pod_annotations) if served else self.config.annotations_for(version)

    def _check_group(self, node_group: str) -> None:
        if node_group not in self.config.node_groups:
            raise UnknownNodeGroupError(
                f"unknown node group {node_group!r}; configured: {', '.join(self.config.node_groups)}"
            )

    @staticmethod
    def _check_model(model_name: str) -> None:
        if not MODEL_NAME_PATTERN.match(model_name):
            raise InvalidRequestError(
                f"invalid model name {model_name!r}: letters, digits, '_', '.', '-', at most 128 characters"
            )

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


def _new_id() -> str:
    return uuid.uuid4().hex
