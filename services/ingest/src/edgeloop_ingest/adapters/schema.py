"""The ingest schema, by Alembic: brought up to date at start-up, from any earlier state.

The migrations live in ``edgeloop_ingest/migrations``. Their version table is
``ingest_alembic_version`` -- not Alembic's default -- because ingest shares the
database with other services that keep their own migrations.

A database created before ingest used Alembic (the ``ingest_samples`` table and
no version table) is upgraded like any other: revision 0001 finds the table it
would create already there and keeps it as it is, 0002 adds the label and
prediction columns. On PostgreSQL the upgrade holds an advisory lock, so ingest
replicas starting together upgrade once, one after the other.
"""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.migrations import AlembicMigrations

MIGRATIONS = AlembicMigrations(
    Path(__file__).resolve().parent.parent / "migrations",
    version_table="ingest_alembic_version",
    lock_key=0x696E67657374,  # "ingest": pg_advisory_xact_lock's key for the upgrade
)
