"""Running the registry's Alembic migrations from code: ``upgrade`` at service start, ``downgrade`` in tests."""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.migrations import AlembicMigrations
from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Its own version table: other services may keep Alembic revisions in the same database.
VERSION_TABLE = "registry_alembic_version"
# Replicas starting together migrate one at a time (PostgreSQL advisory lock; the key is arbitrary but fixed).
_MIGRATIONS = AlembicMigrations(MIGRATIONS_DIR, VERSION_TABLE, lock_key=0x6564_6765_7265_67)  # "edgereg"


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (``alembic upgrade head`` at service start)."""
    _MIGRATIONS.upgrade(engine, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    _MIGRATIONS.downgrade(engine, revision)


def current_revision(engine: Engine) -> str | None:
    return _MIGRATIONS.current_revision(engine)


def head_revision() -> str | None:
    return _MIGRATIONS.head_revision()
