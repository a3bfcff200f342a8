"""Desired vs actual versions and the rollout history in SQL (PostgreSQL distributed, SQLite standalone).

Tables of the deployer's own (``deployer_`` prefix) in the shared database:
``deployer_deployments`` (one row per model and node group), ``deployer_rollouts``
(one row per rollout, rollback or deletion, with its pod annotations so a rollback
re-applies exactly what served), ``deployer_canaries`` (one row per canary run) and
``deployer_canary_samples`` (the answers a canary is judged on, one per sample, so a
redelivered answer counts once and a restart keeps what was seen). Blocking SQLAlchemy
calls run in a thread.

The schema is owned by the Alembic migrations in ``edgeloop_deployer/migrations``
(run at start by :data:`edgeloop_deployer.adapters.schema.MIGRATIONS`); the
tables here describe it for the queries, and a test checks the two agree.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from edgeloop_common import sql
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from edgeloop_deployer.adapters.schema import MIGRATIONS
from edgeloop_deployer.canary import ACTIVE, Canary, CanarySample
from edgeloop_deployer.service import DeploymentState, RolloutPhase, RolloutRecord

metadata = MetaData()

deployments = Table(
    "deployer_deployments",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("node_group", String(64), primary_key=True),
    Column("desired_version", Integer, nullable=True),
    Column("actual_version", Integer, nullable=True),
    Column("previous_version", Integer, nullable=True),
    Column("phase", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

rollouts = Table(
    "deployer_rollouts",
    metadata,
    Column("rollout_id", String(32), primary_key=True),
    Column("model_name", String(128), nullable=False),
    Column("node_group", String(64), nullable=False),
    Column("version", Integer, nullable=True),
    Column("action", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("pod_annotations", JSON, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_deployer_rollouts_key_started", "model_name", "node_group", "started_at"),
)

canaries = Table(
    "deployer_canaries",
    metadata,
    Column("canary_id", String(32), primary_key=True),
    Column("model_name", String(128), nullable=False),
    Column("node_group", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("stable_version", Integer, nullable=False),
    Column("weight", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("pod_annotations", JSON, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("watch_from", DateTime(timezone=True), nullable=True),
    Column("window_ends_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_deployer_canaries_key_started", "model_name", "node_group", "started_at"),
)

canary_samples = Table(
    "deployer_canary_samples",
    metadata,
    Column("canary_id", String(32), primary_key=True),
    Column("sample_id", String(128), primary_key=True),
    Column("arm", String(8), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=False),
)


def create_sql_engine(url: str) -> Engine:
    return sql.create_sql_engine(url, sqlite_pragmas=("journal_mode=WAL",), pool_size=3, max_overflow=2)


class SqlDeploymentStore:
    """Creating one brings the schema up to date (``upgrade=False``: as it is, for tests of the migrations)."""

    def __init__(self, engine: Engine, *, upgrade: bool = True) -> None:
        self.engine = engine
        if upgrade:
            MIGRATIONS.upgrade(engine)

    # --- deployments ---

    async def get(self, model_name: str, node_group: str) -> DeploymentState | None:
        return await asyncio.to_thread(self._get, model_name, node_group)

    async def all(self) -> list[DeploymentState]:
        return await asyncio.to_thread(self._all)

    async def save(self, state: DeploymentState) -> None:
        await asyncio.to_thread(self._save, state)

    def _get(self, model_name: str, node_group: str) -> DeploymentState | None:
        query = select(deployments).where(
            deployments.c.model_name == model_name, deployments.c.node_group == node_group
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return _state(row) if row else None

    def _all(self) -> list[DeploymentState]:
        query = select(deployments).order_by(deployments.c.model_name, deployments.c.node_group)
        with self.engine.connect() as connection:
            return [_state(row) for row in connection.execute(query).mappings()]

    def _save(self, state: DeploymentState) -> None:
        values = {
            "desired_version": state.desired_version,
            "actual_version": state.actual_version,
            "previous_version": state.previous_version,
            "phase": state.phase,
            "reason": state.reason,
            "updated_at": state.updated_at,
        }
        key = (deployments.c.model_name == state.model_name, deployments.c.node_group == state.node_group)
        with self.engine.begin() as connection:
            if connection.execute(update(deployments).where(*key).values(**values)).rowcount == 0:
                connection.execute(
                    insert(deployments).values(model_name=state.model_name, node_group=state.node_group, **values)
                )

    # --- rollouts ---

    async def save_rollout(self, record: RolloutRecord) -> None:
        await asyncio.to_thread(self._save_rollout, record)

    async def rollouts(self, model_name: str, node_group: str, *, limit: int = 20) -> list[RolloutRecord]:
        return await asyncio.to_thread(self._rollouts, model_name, node_group, limit)

    async def last_rollout_of(
        self, model_name: str, node_group: str, version: int, *, phase: RolloutPhase | None = None
    ) -> RolloutRecord | None:
        return await asyncio.to_thread(self._last_rollout_of, model_name, node_group, version, phase)

    def _save_rollout(self, record: RolloutRecord) -> None:
        values = {
            "model_name": record.model_name,
            "node_group": record.node_group,
            "version": record.version,
            "action": record.action,
            "trigger": record.trigger,
            "phase": record.phase,
            "detail": record.detail,
            "pod_annotations": dict(record.pod_annotations),
            "started_at": record.started_at,
            "finished_at": record.finished_at,
        }
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(rollouts).where(rollouts.c.rollout_id == record.rollout_id).values(**values)
            ).rowcount
            if changed == 0:
                connection.execute(insert(rollouts).values(rollout_id=record.rollout_id, **values))

    def _rollouts(self, model_name: str, node_group: str, limit: int) -> list[RolloutRecord]:
        query = (
            select(rollouts)
            .where(rollouts.c.model_name == model_name, rollouts.c.node_group == node_group)
            .order_by(rollouts.c.started_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [_rollout(row) for row in connection.execute(query).mappings()]

    def _last_rollout_of(
        self, model_name: str, node_group: str, version: int, phase: RolloutPhase | None
    ) -> RolloutRecord | None:
        query = select(rollouts).where(
            rollouts.c.model_name == model_name, rollouts.c.node_group == node_group, rollouts.c.version == version
        )
        if phase is not None:
            query = query.where(rollouts.c.phase == phase)
        with self.engine.connect() as connection:
            row = connection.execute(query.order_by(rollouts.c.started_at.desc()).limit(1)).mappings().first()
        return _rollout(row) if row else None

    # --- canaries ---

    async def save_canary(self, canary: Canary) -> None:
        """Insert or update (by ``canary_id``); a finished canary's samples are dropped (its verdict says enough)."""
        await asyncio.to_thread(self._save_canary, canary)

    async def canary_of(self, model_name: str, node_group: str) -> Canary | None:
        """The newest canary run of the model in the group, finished or not."""
        return await asyncio.to_thread(self._canary_of, model_name, node_group)

    async def active_canaries(self) -> list[Canary]:
        return await asyncio.to_thread(self._active_canaries)

    async def add_canary_sample(self, canary_id: str, sample: CanarySample) -> bool:
        """Record one answer; False when that sample was already recorded (a redelivery)."""
        return await asyncio.to_thread(self._add_canary_sample, canary_id, sample)

    async def canary_samples(self, canary_id: str) -> list[CanarySample]:
        return await asyncio.to_thread(self._canary_samples, canary_id)

    def _save_canary(self, canary: Canary) -> None:
        values = {
            "model_name": canary.model_name,
            "node_group": canary.node_group,
            "version": canary.version,
            "stable_version": canary.stable_version,
            "weight": canary.weight,
            "status": canary.status,
            "reason": canary.reason,
            "pod_annotations": dict(canary.pod_annotations),
            "started_at": canary.started_at,
            "watch_from": canary.watch_from,
            "window_ends_at": canary.window_ends_at,
            "finished_at": canary.finished_at,
        }
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(canaries).where(canaries.c.canary_id == canary.canary_id).values(**values)
            ).rowcount
            if changed == 0:
                connection.execute(insert(canaries).values(canary_id=canary.canary_id, **values))
            if canary.status not in ACTIVE:
                connection.execute(delete(canary_samples).where(canary_samples.c.canary_id == canary.canary_id))

    def _canary_of(self, model_name: str, node_group: str) -> Canary | None:
        query = (
            select(canaries)
            .where(canaries.c.model_name == model_name, canaries.c.node_group == node_group)
            .order_by(canaries.c.started_at.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return _canary(row) if row else None

    def _active_canaries(self) -> list[Canary]:
        query = select(canaries).where(canaries.c.status.in_(ACTIVE)).order_by(canaries.c.started_at)
        with self.engine.connect() as connection:
            return [_canary(row) for row in connection.execute(query).mappings()]

    def _add_canary_sample(self, canary_id: str, sample: CanarySample) -> bool:
        key = (canary_samples.c.canary_id == canary_id, canary_samples.c.sample_id == sample.sample_id)
        row = {
            "canary_id": canary_id,
            "sample_id": sample.sample_id,
            "arm": sample.arm,
            "outcome": sample.outcome,
            "confidence": sample.confidence,
            "latency_ms": sample.latency_ms,
            "completed_at": sample.completed_at,
        }
        try:
            with self.engine.begin() as connection:
                if connection.execute(select(canary_samples.c.sample_id).where(*key)).first() is not None:
                    return False
                connection.execute(insert(canary_samples).values(**row))
        except IntegrityError:  # the same sample recorded at the same moment by a concurrent delivery
            return False
        return True

    def _canary_samples(self, canary_id: str) -> list[CanarySample]:
        query = select(canary_samples).where(canary_samples.c.canary_id == canary_id)
        with self.engine.connect() as connection:
            return [
                CanarySample(
                    sample_id=row["sample_id"],
                    arm=row["arm"],
                    outcome=row["outcome"],
                    confidence=row["confidence"],
                    latency_ms=row["latency_ms"],
                    completed_at=sql.aware_utc(row["completed_at"]) or datetime.now(UTC),
                )
                for row in connection.execute(query).mappings()
            ]

    def reachable(self) -> bool:
        return sql.database_reachable(self.engine)


def _state(row: RowMapping) -> DeploymentState:
    return DeploymentState(
        model_name=row["model_name"],
        node_group=row["node_group"],
        desired_version=row["desired_version"],
        actual_version=row["actual_version"],
        previous_version=row["previous_version"],
        phase=row["phase"],
        reason=row["reason"],
        updated_at=sql.aware_utc(row["updated_at"]) or datetime.now(UTC),
    )


def _canary(row: RowMapping) -> Canary:
    return Canary(
        canary_id=row["canary_id"],
        model_name=row["model_name"],
        node_group=row["node_group"],
        version=row["version"],
        stable_version=row["stable_version"],
        weight=row["weight"],
        status=row["status"],
        reason=row["reason"],
        started_at=sql.aware_utc(row["started_at"]) or datetime.now(UTC),
        watch_from=sql.aware_utc(row["watch_from"]),
        window_ends_at=sql.aware_utc(row["window_ends_at"]),
        finished_at=sql.aware_utc(row["finished_at"]),
        pod_annotations=dict(row["pod_annotations"] or {}),
    )


def _rollout(row: RowMapping) -> RolloutRecord:
    return RolloutRecord(
        rollout_id=row["rollout_id"],
        model_name=row["model_name"],
        node_group=row["node_group"],
        version=row["version"],
        action=row["action"],
        trigger=row["trigger"],
        phase=row["phase"],
        detail=row["detail"],
        pod_annotations=dict(row["pod_annotations"] or {}),
        started_at=sql.aware_utc(row["started_at"]) or datetime.now(UTC),
        finished_at=sql.aware_utc(row["finished_at"]),
    )
