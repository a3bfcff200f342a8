"""The deployer schema's Alembic migrations, on SQLite and on the real PostgreSQL (a fresh schema per test):
upgrade -> downgrade -> upgrade, a database the deployer made before it used Alembic adopted with its rows, replicas
starting together, and the tables the code queries agree with what the migrations create."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from edgeloop_deployer.adapters.schema import MIGRATIONS
from edgeloop_deployer.adapters.store import SqlDeploymentStore, create_sql_engine, metadata
from edgeloop_deployer.service import DeploymentState, RolloutRecord
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
)

from tests.helpers import assert_at_base, assert_at_head, recorded_revisions, start_replicas_together

HEAD = "0002"
DEPLOYER_TABLES = {"deployer_deployments", "deployer_rollouts", "deployer_canaries", "deployer_canary_samples"}
STARTED = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
FINISHED = datetime(2026, 3, 1, 12, 1, 40, tzinfo=UTC)
# A row of the pre-Alembic deployer_rollouts, as the store reads it back after the adoption.
OLD_ROLLOUT: dict[str, Any] = {
    "rollout_id": "r-old-1",
    "model_name": "classifier",
    "node_group": "site-a",
    "version": 3,
    "action": "rollout",
    "trigger": "promotion",
    "phase": "succeeded",
    "detail": "3/3 replicas ready",
    "pod_annotations": {"edgeloop.io/model-version": "3"},
    "started_at": STARTED,
    "finished_at": FINISHED,
}


def create_pre_alembic_schema(engine: Engine) -> None:
    """The tables as the deployer created them with ``metadata.create_all`` before it used Alembic (a frozen copy),
    with one deployment and its rollout in them."""
    old = MetaData()
    deployments = Table(
        "deployer_deployments",
        old,
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
        old,
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
    old.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(deployments).values(
                model_name="classifier",
                node_group="site-a",
                desired_version=3,
                actual_version=3,
                previous_version=2,
                phase="ready",
                reason="",
                updated_at=FINISHED,
            )
        )
        connection.execute(insert(rollouts).values(**OLD_ROLLOUT))


@pytest.fixture
def engine(sqlite_or_postgres_url: str) -> Iterator[Engine]:
    engine = create_sql_engine(sqlite_or_postgres_url)
    yield engine
    engine.dispose()


def schema_differences(engine: Engine) -> list[object]:
    """What Alembic's autogenerate would change to make the database's deployer tables match the code's."""
    return MIGRATIONS.schema_differences(engine, metadata, tables=DEPLOYER_TABLES)


def deployment(version: int) -> DeploymentState:
    return DeploymentState(
        model_name="classifier",
        node_group="site-b",
        desired_version=version,
        actual_version=None,
        previous_version=None,
        phase="progressing",
        reason="",
        updated_at=STARTED,
    )


async def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    assert_at_base(engine, MIGRATIONS, DEPLOYER_TABLES)

    store = SqlDeploymentStore(engine)  # the store upgrades at start
    assert_at_head(engine, MIGRATIONS, DEPLOYER_TABLES)
    assert MIGRATIONS.current_revision(engine) == HEAD
    await store.save(deployment(1))
    assert [state.desired_version for state in await store.all()] == [1]

    MIGRATIONS.downgrade(engine, "base")
    assert_at_base(engine, MIGRATIONS, DEPLOYER_TABLES)

    MIGRATIONS.upgrade(engine)
    assert MIGRATIONS.current_revision(engine) == HEAD
    assert await store.all() == []  # a fresh schema: the downgrade really dropped the rows
    await store.save(deployment(2))
    SqlDeploymentStore(engine)  # a restart at head: nothing to do, nothing fails
    assert [state.desired_version for state in await store.all()] == [2]


async def test_a_database_made_before_alembic_is_adopted_with_its_rows(engine: Engine) -> None:
    create_pre_alembic_schema(engine)
    assert MIGRATIONS.current_revision(engine) is None

    store = SqlDeploymentStore(engine)

    assert MIGRATIONS.current_revision(engine) == HEAD
    state = await store.get("classifier", "site-a")
    assert state is not None
    assert (state.desired_version, state.actual_version, state.previous_version, state.phase) == (3, 3, 2, "ready")
    assert state.updated_at == FINISHED
    assert await store.last_rollout_of("classifier", "site-a", 3, phase="succeeded") == RolloutRecord(**OLD_ROLLOUT)
    assert schema_differences(engine) == []
    await store.save(deployment(4))  # and it goes on being written
    assert len(await store.all()) == 2


def test_the_migrated_schema_is_the_one_the_code_queries(engine: Engine) -> None:
    MIGRATIONS.upgrade(engine)
    assert schema_differences(engine) == []
    indexes = {index["name"] for index in inspect(engine).get_indexes("deployer_rollouts")}
    assert "ix_deployer_rollouts_key_started" in indexes


@pytest.mark.postgres
def test_replicas_starting_together_adopt_a_pre_alembic_database_once(fresh_postgres_url: str) -> None:
    engine = create_sql_engine(fresh_postgres_url)
    try:
        create_pre_alembic_schema(engine)
        start_replicas_together(fresh_postgres_url, MIGRATIONS.upgrade, create_sql_engine=create_sql_engine)
        assert MIGRATIONS.current_revision(engine) == HEAD
        assert recorded_revisions(engine, MIGRATIONS) == [HEAD]
        assert schema_differences(engine) == []
    finally:
        engine.dispose()
