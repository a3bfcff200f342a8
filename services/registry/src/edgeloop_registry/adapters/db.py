"""The registry's tables (SQLAlchemy 2 ORM) and its unit of work, on PostgreSQL or SQLite.

The schema is created and changed only by the Alembic migrations in
``edgeloop_registry/migrations``; the classes here describe it for queries, and a
test checks that the two agree. Table names carry a ``registry_`` prefix because
the services share one PostgreSQL database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from edgeloop_common import sql
from edgeloop_common.events import Event
from edgeloop_common.sql import database_reachable as database_reachable  # re-exported for the app
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from edgeloop_registry.service import (
    Alias,
    AliasMove,
    Lineage,
    Model,
    ModelVersion,
    MoveKind,
    NewVersion,
    VersionStatus,
)

VERSION_STATUSES = ("registering", "ready", "failed", "archived")
MOVE_KINDS = ("move", "promotion", "rollback")
NAME_LENGTH = 64


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both databases (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT on PostgreSQL; SQLite numbers rows only through INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


class ModelRow(Base):
    __tablename__ = "registry_models"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class VersionRow(Base):
    __tablename__ = "registry_model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_registry_model_versions_model_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("registry_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(
        Enum(*VERSION_STATUSES, name="registry_version_status", native_enum=False, create_constraint=True, length=16)
    )
    artifact_uri: Mapped[str] = mapped_column(String(1024))
    signature: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    reference_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    dataset_snapshot_id: Mapped[str | None] = mapped_column(String(128))
    parent_version: Mapped[int | None] = mapped_column(Integer)
    parameters: Mapped[dict[str, Any]]
    train_started_at: Mapped[datetime | None]
    train_duration_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime]


class AliasRow(Base):
    __tablename__ = "registry_aliases"
    __table_args__ = (
        # NULLs are distinct in a unique constraint, so the model-wide alias (node_group NULL) has its own index.
        UniqueConstraint("model_id", "alias", "node_group", name="uq_registry_aliases_model_alias_group"),
        Index(
            "uq_registry_aliases_model_alias_modelwide",
            "model_id",
            "alias",
            unique=True,
            postgresql_where=text("node_group IS NULL"),
            sqlite_where=text("node_group IS NULL"),
        ),
        ForeignKeyConstraint(
            ["model_id", "version"],
            ["registry_model_versions.model_id", "registry_model_versions.version"],
            name="fk_registry_aliases_version",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("registry_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(NAME_LENGTH))
    node_group: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    version: Mapped[int] = mapped_column(Integer)
    moved_at: Mapped[datetime]
    moved_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)


class AliasMoveRow(Base):
    __tablename__ = "registry_alias_moves"
    __table_args__ = (Index("ix_registry_alias_moves_alias", "model_id", "alias", "node_group", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("registry_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(NAME_LENGTH))
    node_group: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(
        Enum(*MOVE_KINDS, name="registry_move_kind", native_enum=False, create_constraint=True, length=16)
    )
    moved_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    moved_at: Mapped[datetime]


class OutboxRow(Base):
    """Events waiting to be published, in ``id`` order; ``event_id`` is fixed here, so a re-relay is a duplicate
    consumers recognise."""

    __tablename__ = "registry_outbox"
    __table_args__ = (
        Index(
            "ix_registry_outbox_pending",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(128))
    topic: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    published_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


def create_sql_engine(url: str) -> Engine:
    """An engine for ``url``. On SQLite every transaction is ``BEGIN IMMEDIATE`` (takes the write lock at once),
    the stand-in for PostgreSQL's ``SELECT ... FOR UPDATE``: concurrent alias moves queue instead of failing."""
    return sql.create_sql_engine(
        url, sqlite_pragmas=(*sql.DURABLE_SQLITE_PRAGMAS, "foreign_keys=ON"), sqlite_begin_immediate=True
    )


class SqlUnitOfWork:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self) -> Iterator[SqlRegistryTransaction]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield SqlRegistryTransaction(session)


class SqlRegistryTransaction:
    """:class:`~edgeloop_registry.service.RegistryTransaction` on one SQLAlchemy session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- models -------------------------------------------------------------------------------------------------

    def ensure_model(self, name: str, description: str, created_at: datetime) -> None:
        values = {"name": name, "description": description, "created_at": created_at}
        dialect = self.session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        self.session.execute(insert(ModelRow).values(**values).on_conflict_do_nothing(index_elements=["name"]))

    def add_model(self, name: str, description: str, created_at: datetime) -> None:
        self.session.add(ModelRow(name=name, description=description, created_at=created_at))
        self.session.flush()

    def get_model(self, name: str, *, lock: bool = False) -> Model | None:
        row = self._model_row(name, lock=lock)
        return self._model(row) if row is not None else None

    def list_models(self) -> list[Model]:
        rows = self.session.scalars(select(ModelRow).order_by(ModelRow.name))
        return [self._model(row) for row in rows]

    def _model_row(self, name: str, *, lock: bool = False) -> ModelRow | None:
        query = select(ModelRow).where(ModelRow.name == name)
        if lock:
            query = query.with_for_update()  # PostgreSQL: SELECT ... FOR UPDATE; SQLite holds the lock already
        return self.session.scalars(query).one_or_none()

    def _model_id(self, name: str) -> int:
        row = self._model_row(name)
        if row is None:
            raise LookupError(f"model {name!r} vanished inside its transaction")
        return row.id

    def _model(self, row: ModelRow) -> Model:
        latest = self.session.scalar(select(func.max(VersionRow.version)).where(VersionRow.model_id == row.id))
        production = self.session.scalar(
            select(AliasRow.version).where(
                AliasRow.model_id == row.id, AliasRow.alias == "production", AliasRow.node_group.is_(None)
            )
        )
        return Model(row.name, row.description, row.created_at, latest, production)

    # -- versions -----------------------------------------------------------------------------------------------

    def max_version(self, model_name: str) -> int | None:
        model_id = self._model_id(model_name)
        return self.session.scalar(select(func.max(VersionRow.version)).where(VersionRow.model_id == model_id))

    def add_version(
        self, model_name: str, version: int, new: NewVersion, status: VersionStatus, created_at: datetime
    ) -> ModelVersion:
        row = VersionRow(
            model_id=self._model_id(model_name),
            version=version,
            status=status,
            artifact_uri=new.artifact_uri,
            signature=new.signature,
            metrics=new.metrics,
            reference_stats=new.reference_stats,
            dataset_snapshot_id=new.lineage.dataset_snapshot_id,
            parent_version=new.lineage.parent_version,
            parameters=new.lineage.parameters,
            train_started_at=new.train_started_at,
            train_duration_s=new.train_duration_s,
            created_at=created_at,
        )
        self.session.add(row)
        self.session.flush()
        return _version(model_name, row)

    def _version_row(self, model_name: str, version: int) -> VersionRow | None:
        query = (
            select(VersionRow)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model_name, VersionRow.version == version)
        )
        return self.session.scalars(query).one_or_none()

    def get_version(self, model_name: str, version: int) -> ModelVersion | None:
        row = self._version_row(model_name, version)
        return _version(model_name, row) if row is not None else None

    def list_versions(self, model_name: str, status: VersionStatus | None) -> list[ModelVersion]:
        query = (
            select(VersionRow)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model_name)
            .order_by(VersionRow.version)
        )
        if status is not None:
            query = query.where(VersionRow.status == status)
        return [_version(model_name, row) for row in self.session.scalars(query)]

    def set_status(self, model_name: str, version: int, status: VersionStatus) -> None:
        row = self._version_row(model_name, version)
        if row is None:
            raise LookupError(f"version {version} of {model_name!r} vanished inside its transaction")
        row.status = status
        self.session.flush()

    # -- aliases ------------------------------------------------------------------------------------------------

    def _alias_row(self, model_name: str, alias: str, node_group: str | None) -> AliasRow | None:
        query = (
            select(AliasRow)
            .join(ModelRow, ModelRow.id == AliasRow.model_id)
            .where(ModelRow.name == model_name, AliasRow.alias == alias, _same_group(AliasRow.node_group, node_group))
        )
        return self.session.scalars(query).one_or_none()

    def get_alias(self, model_name: str, alias: str, node_group: str | None) -> Alias | None:
        row = self._alias_row(model_name, alias, node_group)
        return _alias(model_name, row) if row is not None else None

    def list_aliases(self, model_name: str) -> list[Alias]:
        query = (
            select(AliasRow)
            .join(ModelRow, ModelRow.id == AliasRow.model_id)
            .where(ModelRow.name == model_name)
            .order_by(AliasRow.alias, AliasRow.node_group.is_not(None), AliasRow.node_group)
        )
        return [_alias(model_name, row) for row in self.session.scalars(query)]

    def set_alias(self, alias: Alias) -> None:
        row = self._alias_row(alias.model_name, alias.alias, alias.node_group)
        if row is None:
            row = AliasRow(model_id=self._model_id(alias.model_name), alias=alias.alias, node_group=alias.node_group)
            self.session.add(row)
        row.version, row.moved_at, row.moved_by, row.reason = (
            alias.version,
            alias.moved_at,
            alias.moved_by,
            alias.reason,
        )
        self.session.flush()

    def add_move(self, move: AliasMove) -> None:
        self.session.add(
            AliasMoveRow(
                model_id=self._model_id(move.model_name),
                alias=move.alias,
                node_group=move.node_group,
                from_version=move.from_version,
                to_version=move.to_version,
                kind=move.kind,
                moved_by=move.moved_by,
                reason=move.reason,
                moved_at=move.moved_at,
            )
        )
        self.session.flush()

    def moves(self, model_name: str, alias: str, node_group: str | None) -> list[AliasMove]:
        query = (
            select(AliasMoveRow)
            .join(ModelRow, ModelRow.id == AliasMoveRow.model_id)
            .where(
                ModelRow.name == model_name,
                AliasMoveRow.alias == alias,
                _same_group(AliasMoveRow.node_group, node_group),
            )
            .order_by(AliasMoveRow.id)
        )
        return [_move(model_name, row) for row in self.session.scalars(query)]

    # -- outbox -------------------------------------------------------------------------------------------------

    def add_outbox(self, event: Event) -> str:
        row = new_outbox_row(event)
        self.session.add(row)
        self.session.flush()
        return row.event_id


def new_outbox_row(event: Event) -> OutboxRow:
    return OutboxRow(
        event_id=str(uuid.uuid4()),
        event_type=event.event_type,
        topic=event.topic,
        payload=event.model_dump(mode="json"),
        created_at=datetime.now(UTC),
        published_at=None,
        attempts=0,
    )


def _same_group(column: Any, node_group: str | None) -> Any:
    return column.is_(None) if node_group is None else column == node_group


def _version(model_name: str, row: VersionRow) -> ModelVersion:
    return ModelVersion(
        model_name=model_name,
        version=row.version,
        status=row.status,  # type: ignore[arg-type]  # the CHECK constraint keeps it one of VersionStatus
        artifact_uri=row.artifact_uri,
        signature=row.signature,
        metrics=row.metrics,
        reference_stats=row.reference_stats,
        lineage=Lineage(row.dataset_snapshot_id, row.parent_version, row.parameters),
        train_started_at=row.train_started_at,
        train_duration_s=row.train_duration_s,
        created_at=row.created_at,
    )


def _alias(model_name: str, row: AliasRow) -> Alias:
    return Alias(model_name, row.alias, row.node_group, row.version, row.moved_at, row.moved_by, row.reason)


def _move(model_name: str, row: AliasMoveRow) -> AliasMove:
    kind: MoveKind = row.kind  # type: ignore[assignment]  # the CHECK constraint keeps it one of MoveKind
    return AliasMove(
        model_name,
        row.alias,
        row.node_group,
        row.from_version,
        row.to_version,
        kind,
        row.moved_by,
        row.reason,
        row.moved_at,
    )


# -- the outbox as the relay sees it --------------------------------------------------------------------------------


class SqlOutbox:
    """Pending outbox rows for the relay. Blocking calls: the relay runs them in a thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def pending(self, limit: int) -> list[OutboxRow]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            query = select(OutboxRow).where(OutboxRow.published_at.is_(None)).order_by(OutboxRow.id).limit(limit)
            return list(session.scalars(query))

    def mark_published(self, row_id: int) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row_id)
                .values(published_at=datetime.now(UTC), attempts=OutboxRow.attempts + 1, last_error=None)
            )

    def record_failure(self, row_id: int, error: str) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row_id)
                .values(attempts=OutboxRow.attempts + 1, last_error=error[:2000])
            )

    def pending_count(self) -> int:
        with Session(self.engine) as session, session.begin():
            count = session.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.published_at.is_(None)))
            return int(count or 0)
