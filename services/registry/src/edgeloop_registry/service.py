"""The registry's logic: models, versions, aliases, the promotion policy and rollback.

No I/O framework is imported here. Storage is a :class:`UnitOfWork` whose
transactions the adapters implement (SQLAlchemy on PostgreSQL or SQLite); every
change and the event announcing it are written in one transaction, to the
outbox, from which the relay publishes them (so neither exists alone).

Alias moves of one model are serialized: every transaction that moves an alias
or numbers a version first locks the model's row (``lock=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Protocol

from edgeloop_common.events import Event, ModelPromoted, ModelRegistered, utc_now

VersionStatus = Literal["registering", "ready", "failed", "archived"]
MoveKind = Literal["move", "promotion", "rollback"]

PRODUCTION = "production"
# The highest version number: the database column is a 32-bit integer (PostgreSQL's INTEGER). The API refuses a
# larger one with 422, and numbering a version past it is a conflict, not a database error.
MAX_VERSION_NUMBER = 2**31 - 1
# Which status may follow which (PATCH .../versions/{v}); the same status again is a no-op.
STATUS_TRANSITIONS: dict[str, frozenset[str]] = {
    "registering": frozenset({"ready", "failed", "archived"}),
    "ready": frozenset({"failed", "archived"}),
    "failed": frozenset({"archived"}),
    "archived": frozenset({"ready"}),
}
# Float sums such as 0.70 + 0.05 land a hair away from 0.75; a tie within this counts as reaching the bar.
_TIE_TOLERANCE = 1e-9


DEFAULT_POLICY_METRIC = "accuracy"  # image classifiers; a version names another in metrics.policy_metric


class RegistryError(Exception):
    """A request the registry refuses; the message is the reason given to the caller."""


class NotFoundError(RegistryError):
    """An unknown model, version or alias (HTTP 404)."""


class ConflictError(RegistryError):
    """The request contradicts the registry's state (HTTP 409)."""


@dataclass(frozen=True)
class Model:
    name: str
    description: str
    created_at: datetime
    latest_version: int | None = None
    production_version: int | None = None


@dataclass(frozen=True)
class Lineage:
    dataset_snapshot_id: str | None = None
    parent_version: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewVersion:
    """What a client registers; ``version`` None takes the next integer."""

    artifact_uri: str
    version: int | None = None
    signature: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reference_stats: dict[str, Any] | None = None
    lineage: Lineage = field(default_factory=Lineage)
    train_started_at: datetime | None = None
    train_duration_s: float | None = None


@dataclass(frozen=True)
class ModelVersion:
    model_name: str
    version: int
    status: VersionStatus
    artifact_uri: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    reference_stats: dict[str, Any] | None
    lineage: Lineage
    train_started_at: datetime | None
    train_duration_s: float | None
    created_at: datetime

    @property
    def accuracy(self) -> float | None:
        return _number(self.metrics.get("accuracy"))

    @property
    def policy_metric(self) -> str:
        """The figure the promotion gate compares: ``metrics.policy_metric`` (e.g. ``pr_auc``), else accuracy."""
        name = self.metrics.get("policy_metric")
        return name if isinstance(name, str) and name else DEFAULT_POLICY_METRIC

    def figure(self, name: str) -> float | None:
        return _number(self.metrics.get(name))

    @property
    def evaluation_set_id(self) -> str | None:
        value = self.metrics.get("evaluation_set_id")
        return str(value) if value else None


@dataclass(frozen=True)
class Alias:
    model_name: str
    alias: str
    node_group: str | None
    version: int
    moved_at: datetime
    moved_by: str
    reason: str


@dataclass(frozen=True)
class AliasMove:
    model_name: str
    alias: str
    node_group: str | None
    from_version: int | None
    to_version: int
    kind: MoveKind
    moved_by: str
    reason: str
    moved_at: datetime


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class PromotionResult:
    promoted: bool
    decision: str
    version: int
    previous_version: int | None
    node_group: str | None
    alias: str = PRODUCTION


class RegistryTransaction(Protocol):
    """One database transaction: everything done through it commits or rolls back together."""

    def ensure_model(self, name: str, description: str, created_at: datetime) -> None: ...

    def add_model(self, name: str, description: str, created_at: datetime) -> None: ...

    def get_model(self, name: str, *, lock: bool = False) -> Model | None: ...

    def list_models(self) -> list[Model]: ...

    def max_version(self, model_name: str) -> int | None: ...

    def add_version(
        self, model_name: str, version: int, new: NewVersion, status: VersionStatus, created_at: datetime
    ) -> ModelVersion: ...

    def get_version(self, model_name: str, version: int) -> ModelVersion | None: ...

    def list_versions(self, model_name: str, status: VersionStatus | None) -> list[ModelVersion]: ...

    def set_status(self, model_name: str, version: int, status: VersionStatus) -> None: ...

    def get_alias(self, model_name: str, alias: str, node_group: str | None) -> Alias | None: ...

    def list_aliases(self, model_name: str) -> list[Alias]: ...

    def set_alias(self, alias: Alias) -> None: ...

    def add_move(self, move: AliasMove) -> None: ...

    def moves(self, model_name: str, alias: str, node_group: str | None) -> list[AliasMove]:
        """Oldest first."""
        ...

    def add_outbox(self, event: Event) -> str:
        """Write ``event`` to the outbox in this transaction; return its event id."""
        ...


class UnitOfWork(Protocol):
    def transaction(self) -> AbstractContextManager[RegistryTransaction]: ...


def decide_promotion(candidate: ModelVersion, production: ModelVersion | None, *, margin: float) -> PromotionDecision:
    """Promote when there is no production version, or when the candidate's figure reaches production's figure
    *on the candidate's evaluation set* plus ``margin``. The figure is the candidate's ``metrics.policy_metric``
    (``accuracy`` unless it names another, e.g. ``pr_auc`` for the failure model). Production's figure is the
    candidate's ``metrics.baseline.<figure>`` when the baseline is the production version (the trainer measured
    both on one set); otherwise production's own figure if it was measured on the same evaluation set; otherwise
    refuse."""
    if production is None:
        return PromotionDecision(True, f"no production version yet: version {candidate.version} becomes production")
    metric = candidate.policy_metric
    candidate_figure = candidate.figure(metric)
    if candidate_figure is None:
        return PromotionDecision(False, f"version {candidate.version} has no metrics.{metric} to compare")
    production_figure, how = _production_figure(candidate, production, metric)
    if production_figure is None:
        return PromotionDecision(False, how)
    needed = production_figure + margin
    comparison = (
        f"candidate version {candidate.version} {metric} {candidate_figure:.4f} vs production version "
        f"{production.version} {production_figure:.4f} ({how}) + margin {margin:.4f} = {needed:.4f}"
    )
    if candidate_figure >= needed - _TIE_TOLERANCE:
        return PromotionDecision(True, f"promoted: {comparison}")
    return PromotionDecision(False, f"refused: {comparison}")


def _production_figure(candidate: ModelVersion, production: ModelVersion, metric: str) -> tuple[float | None, str]:
    """Production's ``metric`` on the candidate's evaluation set, and how it was found (or why there is none)."""
    baseline = candidate.metrics.get("baseline")
    if isinstance(baseline, dict) and baseline.get("version") == production.version:
        figure = _number(baseline.get(metric))
        if figure is not None:
            return figure, f"measured by the trainer on {candidate.evaluation_set_id or 'the same evaluation set'}"
    candidate_set, production_set = candidate.evaluation_set_id, production.evaluation_set_id
    if candidate_set is not None and candidate_set == production_set:
        figure = production.figure(metric)
        if figure is not None:
            return figure, f"both on {candidate_set}"
        return None, (
            f"refused: production version {production.version} has no metrics.{metric} to compare with (its "
            f"policy metric is {production.policy_metric}); promote with force"
        )
    return None, (
        f"refused: versions {candidate.version} and {production.version} were not evaluated on the same evaluation "
        f"set ({candidate_set or 'none'} vs {production_set or 'none'}) and version {candidate.version} has no "
        f"baseline for production version {production.version} (metrics.baseline.{metric}); retrain or promote with "
        "force"
    )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class RegistryService:
    """The registry's use cases. Blocking (database calls): async callers run them in a thread."""

    def __init__(
        self,
        uow: UnitOfWork,
        *,
        promotion_margin: float = 0.0,
        clock: Callable[[], datetime] = utc_now,
        outbox_written: Callable[[], None] = lambda: None,
    ) -> None:
        self.uow = uow
        self.promotion_margin = promotion_margin
        self.clock = clock
        self.outbox_written = outbox_written  # wakes the relay once a transaction with an event committed

    # -- models -------------------------------------------------------------------------------------------------

    def create_model(self, name: str, description: str = "") -> Model:
        with self.uow.transaction() as tx:
            if tx.get_model(name) is not None:
                raise ConflictError(f"model {name!r} already exists")
            tx.add_model(name, description, self.clock())
            return _require_model(tx, name)

    def list_models(self) -> list[Model]:
        with self.uow.transaction() as tx:
            return tx.list_models()

    def get_model(self, name: str) -> Model:
        with self.uow.transaction() as tx:
            return _require_model(tx, name)

    # -- versions -----------------------------------------------------------------------------------------------

    def register_version(self, model_name: str, new: NewVersion) -> ModelVersion:
        """Add a ready version (the model is created if missing) and write ModelRegistered in the same transaction."""
        with self._writing() as tx:
            tx.ensure_model(model_name, "", self.clock())
            _require_model(tx, model_name, lock=True)  # numbers versions one registration at a time
            latest = tx.max_version(model_name)
            number = new.version if new.version is not None else (latest or 0) + 1
            if number > MAX_VERSION_NUMBER:
                raise ConflictError(
                    f"model {model_name!r} has used up its version numbers (the highest is {MAX_VERSION_NUMBER}); "
                    "register under a new model name"
                )
            if tx.get_version(model_name, number) is not None:
                raise ConflictError(f"version {number} of model {model_name!r} already exists")
            version = tx.add_version(model_name, number, new, "ready", self.clock())
            tx.add_outbox(
                ModelRegistered(
                    model_name=model_name,
                    version=number,
                    artifact_uri=version.artifact_uri,
                    metrics=version.metrics,
                    dataset_snapshot_id=version.lineage.dataset_snapshot_id,
                    parent_version=version.lineage.parent_version,
                    registered_at=version.created_at,
                )
            )
            return version

    def list_versions(self, model_name: str, status: VersionStatus | None = None) -> list[ModelVersion]:
        with self.uow.transaction() as tx:
            _require_model(tx, model_name)
            return tx.list_versions(model_name, status)

    def get_version(self, model_name: str, version: int) -> ModelVersion:
        with self.uow.transaction() as tx:
            return _require_version(tx, model_name, version)

    def set_version_status(self, model_name: str, version: int, status: VersionStatus) -> ModelVersion:
        with self.uow.transaction() as tx:
            _require_model(tx, model_name, lock=True)
            current = _require_version(tx, model_name, version)
            if current.status == status:
                return current
            if status not in STATUS_TRANSITIONS[current.status]:
                allowed = ", ".join(sorted(STATUS_TRANSITIONS[current.status]))
                raise ConflictError(f"version {version} is {current.status}; it can become {allowed}, not {status}")
            if status != "ready":
                pointing = [a for a in tx.list_aliases(model_name) if a.version == version]
                if pointing:
                    names = ", ".join(_alias_label(a.alias, a.node_group) for a in pointing)
                    raise ConflictError(f"version {version} is {names}; move those aliases before marking it {status}")
            tx.set_status(model_name, version, status)
            return replace(current, status=status)

    # -- aliases ------------------------------------------------------------------------------------------------

    def list_aliases(self, model_name: str) -> list[Alias]:
        with self.uow.transaction() as tx:
            _require_model(tx, model_name)
            return tx.list_aliases(model_name)

    def alias_history(self, model_name: str, alias: str, node_group: str | None = None) -> list[AliasMove]:
        """Every move of ``alias`` (for ``node_group``; None = the model-wide alias), newest first."""
        with self.uow.transaction() as tx:
            _require_model(tx, model_name)
            return list(reversed(tx.moves(model_name, alias, node_group)))

    def move_alias(
        self, model_name: str, alias: str, version: int, *, node_group: str | None, reason: str, actor: str
    ) -> Alias:
        """Point ``alias`` at ``version`` by hand (no policy). Moving ``production`` announces ModelPromoted."""
        with self._writing() as tx:
            _require_model(tx, model_name, lock=True)
            _require_ready(_require_version(tx, model_name, version))
            current = _effective_alias(tx, model_name, alias, node_group)
            own = tx.get_alias(model_name, alias, node_group)
            if own is not None and own.version == version:
                return own  # already there: nothing moves, nothing is announced
            previous = current.version if current is not None else None
            return self._move(tx, model_name, alias, node_group, previous, version, "move", actor, reason)

    # -- promotion and rollback ---------------------------------------------------------------------------------

    def promote(
        self,
        model_name: str,
        version: int,
        *,
        node_group: str | None,
        reason: str,
        actor: str,
        force: bool = False,
    ) -> PromotionResult:
        """Move ``production`` to ``version`` if the policy agrees (or ``force``: a person decided)."""
        with self._writing() as tx:
            _require_model(tx, model_name, lock=True)
            candidate = _require_ready(_require_version(tx, model_name, version))
            current = _effective_alias(tx, model_name, PRODUCTION, node_group)
            previous = current.version if current is not None else None
            if previous == version:
                unchanged = f"version {version} is already production for {_scope(node_group)}"
                return PromotionResult(False, unchanged, version, previous, node_group)
            if force:
                decision = PromotionDecision(True, f"forced by {actor}: policy not applied")
            else:
                production = tx.get_version(model_name, previous) if previous is not None else None
                decision = decide_promotion(candidate, production, margin=self.promotion_margin)
            if decision.promote:
                full_reason = f"{reason} ({decision.reason})"
                self._move(tx, model_name, PRODUCTION, node_group, previous, version, "promotion", actor, full_reason)
            return PromotionResult(decision.promote, decision.reason, version, previous, node_group)

    def rollback(
        self, model_name: str, *, node_group: str | None, reason: str, actor: str, to_version: int | None = None
    ) -> PromotionResult:
        """Move ``production`` back: to ``to_version``, or to the version it had before the current one."""
        with self._writing() as tx:
            _require_model(tx, model_name, lock=True)
            current = tx.get_alias(model_name, PRODUCTION, node_group)
            if current is None:
                raise ConflictError(f"there is no production version for {_scope(node_group)} to roll back")
            if to_version is None:
                to_version = _previous_production(tx, model_name, node_group, current.version)
            _require_ready(_require_version(tx, model_name, to_version))
            if to_version == current.version:
                raise ConflictError(f"version {to_version} is already production for {_scope(node_group)}")
            self._move(tx, model_name, PRODUCTION, node_group, current.version, to_version, "rollback", actor, reason)
            decision = f"rolled back from version {current.version} to {to_version}: {reason}"
            return PromotionResult(True, decision, to_version, current.version, node_group)

    # -- internals ----------------------------------------------------------------------------------------------

    def _writing(self) -> AbstractContextManager[RegistryTransaction]:
        """A transaction that may write to the outbox: the relay is woken once it has committed."""
        return _NotifyAfterCommit(self.uow.transaction(), self.outbox_written)

    def _move(
        self,
        tx: RegistryTransaction,
        model_name: str,
        alias: str,
        node_group: str | None,
        previous: int | None,
        version: int,
        kind: MoveKind,
        actor: str,
        reason: str,
    ) -> Alias:
        now = self.clock()
        moved = Alias(model_name, alias, node_group, version, now, actor, reason)
        tx.set_alias(moved)
        tx.add_move(AliasMove(model_name, alias, node_group, previous, version, kind, actor, reason, now))
        if alias == PRODUCTION:
            tx.add_outbox(
                ModelPromoted(
                    model_name=model_name,
                    version=version,
                    alias=alias,
                    previous_version=previous,
                    node_group=node_group,
                    reason=reason,
                    promoted_by=actor,
                    promoted_at=now,
                )
            )
        return moved


class _NotifyAfterCommit(AbstractContextManager[RegistryTransaction]):
    def __init__(self, inner: AbstractContextManager[RegistryTransaction], notify: Callable[[], None]) -> None:
        self.inner = inner
        self.notify = notify

    def __enter__(self) -> RegistryTransaction:
        return self.inner.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        suppressed = self.inner.__exit__(*exc_info)
        if exc_info[0] is None:
            self.notify()
        return suppressed


def _require_model(tx: RegistryTransaction, name: str, *, lock: bool = False) -> Model:
    model = tx.get_model(name, lock=lock)
    if model is None:
        raise NotFoundError(f"model {name!r} does not exist")
    return model


def _require_version(tx: RegistryTransaction, model_name: str, version: int) -> ModelVersion:
    _require_model(tx, model_name)
    found = tx.get_version(model_name, version)
    if found is None:
        raise NotFoundError(f"model {model_name!r} has no version {version}")
    return found


def _require_ready(version: ModelVersion) -> ModelVersion:
    if version.status != "ready":
        raise ConflictError(f"version {version.version} is {version.status}, not ready: it cannot be served")
    return version


def _effective_alias(tx: RegistryTransaction, model_name: str, alias: str, node_group: str | None) -> Alias | None:
    """The alias a node group follows: its own, else the model-wide one."""
    own = tx.get_alias(model_name, alias, node_group)
    if own is None and node_group is not None:
        return tx.get_alias(model_name, alias, None)
    return own


def _previous_production(tx: RegistryTransaction, model_name: str, node_group: str | None, current: int) -> int:
    """The latest earlier production version that was not itself rolled back from and can still be served.

    Rolling back twice after 2 -> 3 -> 4 goes to 3, then to 2 (each rollback undoes one promotion)."""
    history = tx.moves(model_name, PRODUCTION, node_group)
    rolled_back_from: set[int] = set()
    for move in history:
        if move.kind == "rollback" and move.from_version is not None:
            rolled_back_from.add(move.from_version)
        else:
            rolled_back_from.discard(move.to_version)
    for version in _versions_newest_first(history):
        if version == current or version in rolled_back_from:
            continue
        found = tx.get_version(model_name, version)
        if found is not None and found.status == "ready":
            return version
    raise ConflictError(f"production for {_scope(node_group)} has no earlier version to roll back to")


def _versions_newest_first(history: list[AliasMove]) -> Iterator[int]:
    for move in reversed(history):
        yield move.to_version
        if move.from_version is not None:
            yield move.from_version


def _scope(node_group: str | None) -> str:
    return f"node group {node_group!r}" if node_group is not None else "the whole model"


def _alias_label(alias: str, node_group: str | None) -> str:
    return f"{alias} ({_scope(node_group)})"
