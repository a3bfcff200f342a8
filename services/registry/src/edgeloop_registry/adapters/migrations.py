"""Running the registry's Alembic migrations from code: ``upgrade`` at service start, ``downgrade`` in tests."""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.migrations import AlembicMigrations

# Its own version table: other services may keep Alembic revisions in the same database. Replicas starting
# together migrate one at a time (PostgreSQL advisory lock; the key is arbitrary but fixed).
MIGRATIONS = AlembicMigrations(
    Path(__file__).resolve().parent.parent / "migrations",
    version_table="registry_alembic_version",
    lock_key=0x6564_6765_7265_67,  # "edgereg"
)

# The names the registry's app calls: ``alembic upgrade head`` at service start, then the revision it logs.
upgrade = MIGRATIONS.upgrade
current_revision = MIGRATIONS.current_revision
