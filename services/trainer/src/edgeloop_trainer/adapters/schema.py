"""The trainer schema, by Alembic: brought up to date at start-up, from any earlier state.

The migrations live in ``edgeloop_trainer/migrations``. Their version table is
``trainer_alembic_version`` -- not Alembic's default -- because the trainer shares
the database with other services that keep their own migrations.

A database created before the trainer used Alembic (``trainings``,
``training_requests`` and ``training_label_counts`` there, no version table) is
upgraded like any other: revision 0001 finds the tables it would create already
there and keeps them as they are. On PostgreSQL the upgrade holds an advisory lock,
so trainer replicas starting together upgrade once, one after the other.
"""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.migrations import AlembicMigrations

MIGRATIONS = AlembicMigrations(
    Path(__file__).resolve().parent.parent / "migrations",
    version_table="trainer_alembic_version",
    lock_key=0x747261696E6572,  # "trainer": pg_advisory_xact_lock's key for the upgrade
)
