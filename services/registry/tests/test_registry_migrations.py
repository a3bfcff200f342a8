"""Alembic migrations: upgrade -> downgrade -> upgrade on SQLite and on a fresh PostgreSQL schema, and the ORM
classes agree with what the migrations create."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from edgeloop_registry.adapters.db import Base, SqlUnitOfWork, create_sql_engine
from edgeloop_registry.adapters.migrations import MIGRATIONS
from edgeloop_registry.service import NewVersion, RegistryService
from registry_testing import fresh_postgres_url
from sqlalchemy.engine import Engine

from tests.helpers import assert_at_base, assert_at_head

__all__ = ["fresh_postgres_url"]  # a fixture, imported for pytest

REGISTRY_TABLES = {
    "registry_models",
    "registry_model_versions",
    "registry_aliases",
    "registry_alias_moves",
    "registry_outbox",
}


@pytest.fixture
def engine(sqlite_or_postgres_url: str) -> Iterator[Engine]:
    engine = create_sql_engine(sqlite_or_postgres_url)
    yield engine
    if engine.dialect.name == "postgresql":
        MIGRATIONS.downgrade(engine)  # the schema is shared by this module's tests
    engine.dispose()


def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    assert_at_base(engine, MIGRATIONS, REGISTRY_TABLES)

    MIGRATIONS.upgrade(engine)
    assert_at_head(engine, MIGRATIONS, REGISTRY_TABLES)
    service = RegistryService(SqlUnitOfWork(engine))
    service.register_version("classifier", NewVersion(artifact_uri="file:///models/classifier/1"))

    MIGRATIONS.downgrade(engine)
    assert_at_base(engine, MIGRATIONS, REGISTRY_TABLES)

    MIGRATIONS.upgrade(engine)
    assert_at_head(engine, MIGRATIONS, REGISTRY_TABLES)
    assert service.list_models() == []  # a fresh schema: the downgrade really dropped the data
    assert service.register_version("classifier", NewVersion(artifact_uri="file:///m/1")).version == 1
    MIGRATIONS.upgrade(engine)  # at head already: nothing to do, nothing fails


def test_orm_classes_match_the_migrations(engine: Engine) -> None:
    MIGRATIONS.upgrade(engine)
    assert MIGRATIONS.schema_differences(engine, Base.metadata) == []
