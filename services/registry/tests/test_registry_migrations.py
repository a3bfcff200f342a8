"""Alembic migrations: upgrade -> downgrade -> upgrade on SQLite and on a fresh PostgreSQL schema, and the ORM
classes agree with what the migrations create."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from edgeloop_common import migrations as common_migrations
from edgeloop_registry.adapters import migrations
from edgeloop_registry.adapters.db import Base, SqlUnitOfWork, create_sql_engine
from edgeloop_registry.service import NewVersion, RegistryService
from registry_testing import fresh_postgres_url
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

__all__ = ["fresh_postgres_url"]  # a fixture, imported for pytest

REGISTRY_TABLES = {
    "registry_models",
    "registry_model_versions",
    "registry_aliases",
    "registry_alias_moves",
    "registry_outbox",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    engine = create_sql_engine(url)
    yield engine
    if request.param == "postgresql":
        migrations.downgrade(engine)  # the schema is shared by this module's tests
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    assert not tables(engine) & REGISTRY_TABLES

    migrations.upgrade(engine)
    assert tables(engine) >= REGISTRY_TABLES
    assert migrations.current_revision(engine) == migrations.head_revision() is not None
    service = RegistryService(SqlUnitOfWork(engine))
    service.register_version("classifier", NewVersion(artifact_uri="file:///models/classifier/1"))

    migrations.downgrade(engine)
    assert not tables(engine) & REGISTRY_TABLES
    assert migrations.current_revision(engine) is None

    migrations.upgrade(engine)
    assert tables(engine) >= REGISTRY_TABLES
    assert service.list_models() == []  # a fresh schema: the downgrade really dropped the data
    assert service.register_version("classifier", NewVersion(artifact_uri="file:///m/1")).version == 1
    migrations.upgrade(engine)  # at head already: nothing to do, nothing fails


def test_orm_classes_match_the_migrations(engine: Engine) -> None:
    migrations.upgrade(engine)
    differences = common_migrations.schema_differences(engine, Base.metadata, version_table=migrations.VERSION_TABLE)
    assert differences == []
