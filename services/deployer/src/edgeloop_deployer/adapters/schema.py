"""The deployer schema, by Alembic: brought up to date at start-up, from any earlier state.

The migrations live in ``edgeloop_deployer/migrations``. Their version table is
``deployer_alembic_version`` -- not Alembic's default -- because the deployer shares
the database with other services that keep their own migrations.

A database created before the deployer used Alembic (``deployer_deployments`` and
``deployer_rollouts`` there, no version table) is upgraded like any other: revision
0001 finds the tables it would create already there and keeps them as they are. On
PostgreSQL the upgrade holds an advisory lock, so deployer replicas starting together
upgrade once, one after the other.
"""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.migrations import AlembicMigrations

MIGRATIONS = AlembicMigrations(
    Path(__file__).resolve().parent.parent / "migrations",
    version_table="deployer_alembic_version",
    lock_key=0x6465706C6F796572,  # "deployer": pg_advisory_xact_lock's key for the upgrade
)
