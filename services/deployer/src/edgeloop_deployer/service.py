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

With a canary weight (``CanaryPolicy.weight`` > 0) a promotion over a version that serves
first deploys the candidate beside it (the target's canary: one pod, or a model server of
its own), lets it take that share of the group's traffic, judges its answers against the
stable version's (:mod:`edgeloop_deployer.canary`), and then rolls it out to the group or
removes it again (phase ``rolled_back``, with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from edgeloop_common.bus.base import BusUnavailableError
from edgeloop_common.events import CanaryStatus, DeploymentPhase, DeploymentUpdated, InferenceCompleted, ModelPromoted

from edgeloop_deployer.canary import (
    ACTIVE,
    Canary,
    CanaryPolicy,
    CanaryRunStatus,
    CanarySample,
    CanaryStats,
    Verdict,
    judge,
    sample_of,
    split_answer,
    stats_of,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "deployer"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

RolloutAction = Literal["deploy", "rollback", "delete", "canary"]
RolloutTrigger = Literal["promotion", "http", "resume"]
# A rollout record's phase: the deployment phases, and "superseded" for one replaced by a newer request.
RolloutPhase = Literal["pending", "progressing", "ready", "failed", "rolled_back", "deleted", "superseded", "canary"]
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


class NoCanaryError(DeployerError):
    """No canary of the model runs in the node group (or it is past the point where it can be decided)."""


class CanaryNotFoundError(DeployerError):
    """No canary of the model ever ran in the node group."""


class TargetError(Exception):
    """The target refused or failed an operation; the message says why (shown to users)."""


@dataclass(frozen=True)
class WorkloadPlan:
    """What to make the edge of one node group serve."""

    model_name: str
    node_group: str
    version: int
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    canary: bool = False  # the group's canary (one pod / a server of its own) instead of its stable workload


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

    # Canaries: ``apply``/``observe`` of a plan with ``canary=True`` deploy and watch the group's canary.
    supports_canary: bool

    async def delete_canary(self, model_name: str, node_group: str) -> bool:
        """Remove the group's canary; False when there was none."""

    def canary_endpoint(self, model_name: str, node_group: str) -> str | None:
        """TF Serving REST base URL of the group's canary model server."""

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

    async def save_canary(self, canary: Canary) -> None: ...

    async def canary_of(self, model_name: str, node_group: str) -> Canary | None:
        """The newest canary run of the model in the group, finished or not."""

    async def active_canaries(self) -> list[Canary]: ...

    async def add_canary_sample(self, canary_id: str, sample: CanarySample) -> bool: ...

    async def canary_samples(self, canary_id: str) -> list[CanarySample]: ...


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
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)


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
        self._watching: dict[tuple[str, str], Canary] = {}  # canaries taking traffic: their answers are recorded
        self._decisions: dict[tuple[str, str], Verdict] = {}  # an operator's abort or complete, for the watch loop
        self._wake: dict[tuple[str, str], asyncio.Event] = {}

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
        canary_weight: float | None = None,
    ) -> RolloutRecord:
        """Start rolling ``version`` out to ``node_group``; returns at once (the rollout runs in the background).

        With a canary weight (``canary_weight``, else the policy's) above 0, a target that can run canaries and
        another version serving there, the candidate goes through a canary first."""
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
            weight = self.config.canary.weight if canary_weight is None else canary_weight
            if weight > 0 and getattr(self.target, "supports_canary", False):
                state = await self.store.get(model_name, node_group)
                if state is not None and state.actual_version is not None and state.actual_version != version:
                    return await self._start(key, version, "canary", trigger, reason, annotations, canary_weight=weight)
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
            await self._close_canary(key, "stopped by a deletion", remove=True)
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
        canary_keys = set()
        for canary in await self.store.active_canaries():
            if canary.node_group not in self.config.node_groups:
                log.warning("not resuming the canary of %s in %s: no longer a configured group", *canary.key)
                continue
            canary_keys.add(canary.key)
            async with self._lock(canary.key):
                state = await self.store.get(*canary.key)
                why = f"canary of version {canary.version} resumed after a restart ({canary.status})"
                record = RolloutRecord(
                    _new_id(), *canary.key, canary.version, "canary", "resume", "canary", why,
                    dict(canary.pod_annotations), utc_now(),
                )  # fmt: skip
                await self.store.save_rollout(record)
                pending = state or DeploymentState(
                    *canary.key, canary.version, canary.stable_version, None, "canary", why, utc_now()
                )
                self._spawn(canary.key, record, self._run_canary(record, pending, canary))
                resumed.append(record)
        for state in await self.store.all():
            if state.phase not in ("pending", "progressing") or state.desired_version is None:
                continue
            if (state.model_name, state.node_group) in canary_keys:
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

    # --- canaries ---------------------------------------------------------------------------------------------

    async def load_canaries(self) -> None:
        """Before the bus delivers answers (at start): the canaries that were taking traffic record them again."""
        for canary in await self.store.active_canaries():
            if canary.status == "watching":
                self._watching[canary.key] = canary

    async def on_inference(self, event: InferenceCompleted) -> None:
        """Record an answer of a group whose canary is watching (idempotent per sample)."""
        canary = self._watching.get((split_answer(event).model_name, event.site_id))
        if canary is None:
            return
        sample = sample_of(event, canary)
        if sample is not None:
            await self.store.add_canary_sample(canary.canary_id, sample)

    async def canary(self, model_name: str, node_group: str) -> tuple[Canary, CanaryStats | None]:
        """The newest canary of the model in the group, and while it runs, what its answers show so far."""
        self._check_group(node_group)
        canary = await self.store.canary_of(model_name, node_group)
        if canary is None:
            raise CanaryNotFoundError(f"no canary of {model_name} ever ran in {node_group}")
        if canary.status not in ACTIVE:
            return canary, None
        return canary, stats_of(await self.store.canary_samples(canary.canary_id))

    async def abort_canary(self, model_name: str, node_group: str, *, reason: str = "") -> Canary:
        """An operator stops the canary: it is removed and the stable version keeps serving."""
        why = f"aborted by hand: {reason}" if reason else "aborted by hand"
        return await self._decide(model_name, node_group, Verdict("fail", why), allowed=("deploying", "watching"))

    async def complete_canary(self, model_name: str, node_group: str, *, reason: str = "") -> Canary:
        """An operator passes the canary before its window is over: the candidate rolls out to the group."""
        why = f"completed by hand: {reason}" if reason else "completed by hand"
        return await self._decide(model_name, node_group, Verdict("pass", why), allowed=("watching",))

    async def _decide(self, model_name: str, node_group: str, verdict: Verdict, *, allowed: tuple[str, ...]) -> Canary:
        self._check_group(node_group)
        key = (model_name, node_group)
        async with self._lock(key):
            canary = await self.store.canary_of(model_name, node_group)
            if canary is None or canary.status not in allowed or key not in self._tasks:
                status = canary.status if canary is not None else "none ran"
                raise NoCanaryError(
                    f"no canary of {model_name} in {node_group} to {'pass' if verdict.decision == 'pass' else 'abort'}"
                    f" (last: {status})"
                )
            self._decisions[key] = verdict
            self._wake.setdefault(key, asyncio.Event()).set()
            return canary

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
        *,
        canary_weight: float = 0.0,
    ) -> RolloutRecord:
        await self._cancel(key, superseded_by=version)
        # A canary in flight ends here; a new canary takes its place at the target, anything else removes it.
        await self._close_canary(key, f"superseded by version {version}", remove=action != "canary")
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
        if action == "canary" and actual is not None:
            canary = Canary(
                record.rollout_id, model_name, node_group, version, actual, canary_weight, "deploying", reason,
                utc_now(), pod_annotations=dict(annotations),
            )  # fmt: skip
            await self.store.save_canary(canary)  # before the task: a restart from here on resumes the canary
            self._spawn(key, record, self._run_canary(record, pending, canary))
        else:
            self._spawn(key, record, self._run(record, pending))
        return record

    def _spawn(self, key: tuple[str, str], record: RolloutRecord, work: Coroutine[Any, Any, None]) -> None:
        self._running[key] = record
        task = asyncio.create_task(work, name=f"rollout:{key[0]}:{key[1]}:{record.version}")
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

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
        await self._settle(record, state, plan, outcome, started)

    async def _settle(
        self,
        record: RolloutRecord,
        state: DeploymentState,
        plan: WorkloadPlan,
        outcome: RolloutObservation,
        started: float,
        *,
        canary: Canary | None = None,
    ) -> None:
        """Finish a rollout from how it went: ready, or rolled back to the version that served (or failed)."""
        told = f"{canary.reason}; " if canary is not None else ""
        if outcome.state == "ready":
            await self._finish(
                record, state, "ready", told + outcome.detail, served=plan.version, started=started, canary=canary
            )
            return
        why = f"{told}version {plan.version} did not become ready: {outcome.detail}"
        failed = replace(canary, status="rolled_back") if canary is not None else None
        previous = state.actual_version
        if previous is None or previous == plan.version:
            why += "; no previous version to roll back to"
            await self._finish(record, state, "failed", why, served=previous, started=started, canary=failed)
            return
        if not self.target.rolls_back:
            why += f"; version {previous} keeps serving"
            await self._finish(record, state, "failed", why, served=previous, started=started, canary=failed)
            return
        log.warning("%s in %s: %s; rolling back to version %d", plan.model_name, plan.node_group, why, previous)
        await self._progress(record, f"{why}; rolling back to version {previous}")
        annotations = await self._annotations_of_served(plan.model_name, plan.node_group, previous)
        back = await self._apply_and_watch(replace(plan, version=previous, pod_annotations=annotations))
        if back.state == "ready":
            why += f"; rolled back to version {previous}"
            await self._finish(record, state, "rolled_back", why, served=previous, started=started, canary=failed)
        else:
            why += f"; rolling back to version {previous} failed too: {back.detail}"
            await self._finish(record, state, "failed", why, served=None, started=started, canary=failed)

    async def _apply_and_watch(self, plan: WorkloadPlan, canary: Canary | None = None) -> RolloutObservation:
        try:
            await self.target.apply(plan)
        except TargetError as exc:
            return RolloutObservation("failed", f"the {self.target.name} target refused it: {exc}")
        key = (plan.model_name, plan.node_group)
        record = self._running.get(key)
        if record is not None and record.phase in ("pending", "canary"):
            progressing = replace(record, phase="progressing", detail=f"version {plan.version} applied")
            self._running[key] = progressing
            await self.store.save_rollout(progressing)
            current = await self.store.get(plan.model_name, plan.node_group)
            if current is not None:
                moving = replace(current, phase="progressing", updated_at=utc_now())
                await self.store.save(moving)
                await self._announce(moving, canary)
        return await self._watch(plan)

    # --- one canary -------------------------------------------------------------------------------------------

    async def _run_canary(self, record: RolloutRecord, state: DeploymentState, canary: Canary) -> None:
        """deploying -> watching -> promoting (the ordinary rollout of the candidate), or removed on a failure.
        Resumes from ``canary.status`` (a restart)."""
        started = time.monotonic()
        policy = self.config.canary
        key = canary.key
        plan = WorkloadPlan(*key, canary.version, canary.pod_annotations, canary=True)
        try:
            if canary.status == "deploying":
                beside = f"canary of version {canary.version} deploying beside version {canary.stable_version}"
                canary = await self._canary_moved(record, canary, beside)
                try:
                    await self.target.apply(plan)
                except TargetError as exc:
                    outcome = RolloutObservation("failed", f"the {self.target.name} target refused it: {exc}")
                else:
                    outcome = await self._watch(plan)
                aborted = self._decisions.get(key)
                if outcome.state != "ready" or (aborted is not None and aborted.decision == "fail"):
                    why = aborted.reason if aborted is not None else f"it did not become ready: {outcome.detail}"
                    await self._canary_failed(record, state, canary, why, started)
                    return
                watch_from = utc_now() + timedelta(seconds=policy.settle_s)
                canary = replace(
                    canary,
                    status="watching",
                    watch_from=watch_from,
                    window_ends_at=watch_from + timedelta(seconds=policy.window_s),
                )
                self._watching[key] = canary
                canary = await self._canary_moved(
                    record,
                    canary,
                    f"canary of version {canary.version} takes {canary.weight:.0%} of the traffic, watched against "
                    f"version {canary.stable_version} for {policy.window_s:g} s",
                )
            if canary.status == "watching":
                self._watching[key] = canary
                verdict = await self._judge_until_decided(record, canary)
                self._watching.pop(key, None)
                if verdict.decision == "fail":
                    await self._canary_failed(record, state, canary, verdict.reason, started)
                    return
                passed = f"canary of version {canary.version} {verdict.reason}"
                canary = replace(canary, status="promoting", reason=passed)
                await self.store.save_canary(canary)
            promoted = WorkloadPlan(*key, canary.version, canary.pod_annotations)
            outcome = await self._apply_and_watch(promoted, canary)
            await self._remove_canary_workload(*key)
            status: CanaryRunStatus = "completed" if outcome.state == "ready" else "rolled_back"
            done = replace(canary, status=status, finished_at=utc_now())
            await self.store.save_canary(done)
            await self._settle(record, state, promoted, outcome, started, canary=done)
        finally:
            if self._watching.get(key, canary).canary_id == canary.canary_id:
                self._watching.pop(key, None)
            self._decisions.pop(key, None)

    async def _judge_until_decided(self, record: RolloutRecord, canary: Canary) -> Verdict:
        policy = self.config.canary
        wake = self._wake.setdefault(canary.key, asyncio.Event())
        told = ""
        while True:
            decided = self._decisions.pop(canary.key, None)
            stats = stats_of(await self.store.canary_samples(canary.canary_id))
            verdict = decided or judge(canary, stats, policy, now=utc_now())
            summary = f"{verdict.reason} ({stats.describe(canary)})"
            if verdict.decision != "wait":
                log.info("canary of %s:%d in %s: %s", canary.model_name, canary.version, canary.node_group, summary)
                return Verdict(verdict.decision, summary)
            if summary != told:
                told = summary
                await self._progress(self._running.get(canary.key, record), summary)
            wake.clear()
            with contextlib.suppress(TimeoutError):  # no operator decision: look at the answers again
                await asyncio.wait_for(wake.wait(), timeout=policy.check_interval_s)

    async def _canary_moved(self, record: RolloutRecord, canary: Canary, reason: str) -> Canary:
        """Store and announce the canary's new stage (phase ``canary``)."""
        canary = replace(canary, reason=reason)
        await self.store.save_canary(canary)
        current = self._running.get(canary.key, record)
        moved = replace(current, phase="canary", detail=reason)
        if canary.key in self._running:
            self._running[canary.key] = moved
        await self.store.save_rollout(moved)
        state = await self.store.get(*canary.key)
        staged = DeploymentState(
            *canary.key,
            canary.version,
            canary.stable_version,
            state.previous_version if state else None,
            "canary",
            reason,
            utc_now(),
        )
        await self.store.save(staged)
        await self._announce(staged, canary)
        return canary

    async def _canary_failed(
        self, record: RolloutRecord, state: DeploymentState, canary: Canary, why: str, started: float
    ) -> None:
        """Remove the canary; the stable version keeps serving (it was never touched)."""
        removal = await self._remove_canary_workload(*canary.key)
        keeps = f"version {canary.stable_version} keeps serving"
        reason = f"canary of version {canary.version} failed: {why}{removal}; {keeps}"
        log.warning("%s in %s: %s", canary.model_name, canary.node_group, reason)
        failed = replace(canary, status="rolled_back", reason=reason, finished_at=utc_now())
        await self.store.save_canary(failed)
        await self._finish(
            record, state, "rolled_back", reason, served=canary.stable_version, started=started, canary=failed
        )

    async def _remove_canary_workload(self, model_name: str, node_group: str) -> str:
        """Remove the group's canary at the target; what went wrong, as a clause of a reason ('' if nothing)."""
        try:
            await self.target.delete_canary(model_name, node_group)
        except TargetError as exc:
            log.error("removing the canary of %s in %s failed: %s", model_name, node_group, exc)
            return f" (removing the canary failed: {exc})"
        return ""

    async def _close_canary(self, key: tuple[str, str], why: str, *, remove: bool) -> None:
        """A canary still recorded as running ends without a verdict (its task was cancelled just before)."""
        canary = await self.store.canary_of(*key)
        if canary is None or canary.status not in ACTIVE:
            return
        self._watching.pop(key, None)
        if remove:
            why += await self._remove_canary_workload(*key)
        await self.store.save_canary(replace(canary, status="superseded", reason=why, finished_at=utc_now()))

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
        canary: Canary | None = None,
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
        await self._announce(final, canary)

    async def _announce(self, state: DeploymentState, canary: Canary | None = None) -> None:
        key = (state.model_name, state.node_group)
        status = _CANARY_STATUS.get(canary.status) if canary is not None else None
        # The canary's server while it exists (until the candidate serves the group, or it is removed).
        live = canary is not None and canary.status in ACTIVE
        event = DeploymentUpdated(
            model_name=state.model_name,
            node_group=state.node_group,
            desired_version=state.desired_version,
            actual_version=state.actual_version,
            phase=state.phase,
            reason=state.reason,
            endpoint=self.target.endpoint(*key),
            canary_version=canary.version if canary is not None else None,
            canary_weight=canary.weight if canary is not None else None,
            canary_endpoint=self.target.canary_endpoint(*key) if live else None,
            canary_status=status,
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


# A canary run's status as DeploymentUpdated tells it (a superseded one is not mentioned: the newer request is).
_CANARY_STATUS: dict[str, CanaryStatus] = {
    "deploying": "deploying",
    "watching": "watching",
    "promoting": "passed",
    "completed": "passed",
    "rolled_back": "failed",
}


def _new_id() -> str:
    return uuid.uuid4().hex
