"""Canary rollouts, the judging part (pure): which answers belong to a canary, and whether it passes.

A canary serves ``weight`` of a node group's traffic beside the stable version: the gateway and the site's edge agent
send a sample to it when :func:`edgeloop_common.events.in_canary_share` says so, and fall back to the stable version
when the canary fails to answer. So every answer of the group names the version that served it, and an answer of
the stable version to a sample in the canary's share is a failed canary answer. Both kinds of answers count: the
gateway's own (``served_by=cloud``) and the edge agent's, forwarded by ingest (``served_by=edge``, or a hard
example's ``joint`` record, which keeps the edge model's answer when the device got the deep cloud model's). The
deployer compares the canary's answers with the stable version's over a window: error rate, mean confidence, p95
latency (docs/deployer.md, "Canary rollouts").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from edgeloop_common.events import InferenceCompleted, in_canary_share

# deploying: the canary's server coming up; watching: taking its share; promoting: passed, the candidate rolls out to
# the group; then completed, rolled_back (failed, aborted) or superseded (a newer request for the group).
CanaryRunStatus = Literal["deploying", "watching", "promoting", "completed", "rolled_back", "superseded"]
ACTIVE: tuple[CanaryRunStatus, ...] = ("deploying", "watching", "promoting")
Arm = Literal["canary", "stable"]
SampleOutcome = Literal["ok", "error"]


@dataclass(frozen=True)
class CanaryPolicy:
    """When a canary passes (from the settings, ``EDGELOOP_DEPLOYER_CANARY_*``)."""

    weight: float = 0.0  # 0: no canary, a promotion rolls out at once
    window_s: float = 300.0
    settle_s: float = 5.0  # before the window: gateways and edge agents take the split up
    min_samples: int = 50
    max_error_rate: float = 0.02
    max_latency_ratio: float = 1.5
    max_confidence_drop: float = 0.05
    max_wait_s: float = 1800.0  # after the window, waiting for min_samples; then it fails
    check_interval_s: float = 2.0


@dataclass(frozen=True)
class Canary:
    """One canary run of a (model, node group), as stored."""

    canary_id: str
    model_name: str
    node_group: str
    version: int
    stable_version: int
    weight: float
    status: CanaryRunStatus
    reason: str
    started_at: datetime
    watch_from: datetime | None = None  # answers completed from then on count
    window_ends_at: datetime | None = None
    finished_at: datetime | None = None
    pod_annotations: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.model_name, self.node_group)


@dataclass(frozen=True)
class CanarySample:
    sample_id: str
    arm: Arm
    outcome: SampleOutcome
    confidence: float
    latency_ms: float
    completed_at: datetime


@dataclass(frozen=True)
class ArmStats:
    answers: int  # answered by this arm's version
    errors: int  # the canary's: its share answered by the stable version (the canary failed, the client fell back)
    mean_confidence: float | None
    p95_latency_ms: float | None

    @property
    def samples(self) -> int:
        return self.answers + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.samples if self.samples else 0.0

    def describe(self, version: int) -> str:
        text = f"version {version}: {self.answers} answers"
        if self.errors:
            text += f", {self.errors} failed (error rate {self.error_rate:.2f})"
        if self.mean_confidence is not None:
            text += f", mean confidence {self.mean_confidence:.3f}"
        if self.p95_latency_ms is not None:
            text += f", p95 latency {self.p95_latency_ms:.1f} ms"
        return text


@dataclass(frozen=True)
class CanaryStats:
    canary: ArmStats
    stable: ArmStats

    def describe(self, canary: Canary) -> str:
        return f"{self.canary.describe(canary.version)}; {self.stable.describe(canary.stable_version)}"


Decision = Literal["pass", "fail", "wait"]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str


@dataclass(frozen=True)
class SplitAnswer:
    """The answer of the version the canary split chose for a sample: which model and version, how sure, how fast."""

    model_name: str
    model_version: int
    confidence: float
    latency_ms: float


def split_answer(event: InferenceCompleted) -> SplitAnswer:
    """What the split chose in ``event``: the answer itself (the gateway's, or an edge agent's), or, for a hard example
    an edge agent offered to the deep cloud model (``joint``), the edge model's own answer and its latency (the
    device may have got the cloud model's, which no split chose; the time the cloud took is not the edge model's)."""
    joint = event.joint
    if joint is None:
        return SplitAnswer(event.model_name, event.model_version, event.confidence, event.latency_ms)
    confidence = max(joint.edge_scores.values(), default=0.0)
    return SplitAnswer(
        joint.edge_model_name, joint.edge_model_version, min(1.0, max(0.0, confidence)), joint.edge_latency_ms
    )


def sample_of(event: InferenceCompleted, canary: Canary) -> CanarySample | None:
    """What ``event`` says about ``canary`` (None: nothing; another model, site or version, or too early)."""
    answer = split_answer(event)
    if answer.model_name != canary.model_name or event.site_id != canary.node_group:
        return None
    if canary.watch_from is None or event.completed_at < canary.watch_from:
        return None
    if answer.model_version == canary.version:
        arm: Arm = "canary"
        outcome: SampleOutcome = "ok"
    elif answer.model_version == canary.stable_version:
        # In the canary's share but answered by the stable version: the canary did not answer it.
        failed = in_canary_share(event.sample_id, canary.weight)
        arm, outcome = ("canary", "error") if failed else ("stable", "ok")
    else:
        return None
    return CanarySample(event.sample_id, arm, outcome, answer.confidence, answer.latency_ms, event.completed_at)


def stats_of(samples: Sequence[CanarySample]) -> CanaryStats:
    return CanaryStats(canary=_arm(samples, "canary"), stable=_arm(samples, "stable"))


def _arm(samples: Sequence[CanarySample], arm: Arm) -> ArmStats:
    mine = [s for s in samples if s.arm == arm]
    answered = [s for s in mine if s.outcome == "ok"]
    latencies = sorted(s.latency_ms for s in answered)
    return ArmStats(
        answers=len(answered),
        errors=len(mine) - len(answered),
        mean_confidence=sum(s.confidence for s in answered) / len(answered) if answered else None,
        p95_latency_ms=latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None,
    )


def judge(canary: Canary, stats: CanaryStats, policy: CanaryPolicy, *, now: datetime) -> Verdict:
    """Fail as soon as enough samples show a breach; pass only when the window is over with enough samples."""
    mine, stable = stats.canary, stats.stable
    enough = mine.samples >= policy.min_samples
    if enough and mine.error_rate > policy.max_error_rate:
        return Verdict(
            "fail",
            f"error rate {mine.error_rate:.2f} ({mine.errors} of {mine.samples} answers of its share failed) "
            f"above the {policy.max_error_rate:.2f} allowed",
        )
    if enough and stable.answers >= policy.min_samples and mine.answers:
        if mine.mean_confidence is not None and stable.mean_confidence is not None:
            drop = stable.mean_confidence - mine.mean_confidence
            if drop > policy.max_confidence_drop:
                return Verdict(
                    "fail",
                    f"mean confidence {mine.mean_confidence:.3f} against {stable.mean_confidence:.3f} of version "
                    f"{canary.stable_version}: a drop of {drop:.3f}, above the {policy.max_confidence_drop:.3f} "
                    "allowed",
                )
        if mine.p95_latency_ms is not None and stable.p95_latency_ms:
            ratio = mine.p95_latency_ms / stable.p95_latency_ms
            if ratio > policy.max_latency_ratio:
                return Verdict(
                    "fail",
                    f"p95 latency {mine.p95_latency_ms:.1f} ms against {stable.p95_latency_ms:.1f} ms of version "
                    f"{canary.stable_version}: {ratio:.2f} times, above the {policy.max_latency_ratio:g} allowed",
                )
    window_ends_at = canary.window_ends_at or now
    if now < window_ends_at:
        return Verdict("wait", "watching")
    if not enough or stable.answers < policy.min_samples:
        waited = (now - window_ends_at).total_seconds()
        short = (
            f"{mine.samples} samples of version {canary.version} and {stable.answers} of version "
            f"{canary.stable_version}, {policy.min_samples} of each needed"
        )
        if waited >= policy.max_wait_s:
            after = f"within {policy.max_wait_s:g} s after the window"
            return Verdict("fail", f"not enough traffic to judge it: {short} {after}")
        return Verdict("wait", f"window over, waiting for traffic: {short}")
    return Verdict("pass", f"passed over {policy.window_s:g} s")
