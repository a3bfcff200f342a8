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

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, text

VERSION_TABLE = "ingest_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_UPGRADE_LOCK_KEY = 0x696E67657374  # "ingest": pg_advisory_xact_lock's key for the schema upgrade


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
        command.upgrade(alembic_config(connection), revision)


def downgrade_schema(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()
