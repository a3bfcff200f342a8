"""Running a service's Alembic migrations from code: ``upgrade`` at service start, ``downgrade`` in tests.

Each service keeps its own version table (``<service>_alembic_version``, not Alembic's default) because the
services share one database. On PostgreSQL an upgrade holds an advisory lock of the service's own, so replicas
starting together migrate once, one after the other. The service's ``env.py`` runs the migrations on the
connection handed over in ``config.attributes["connection"]`` (:meth:`AlembicMigrations.run_env`).

A database a service created before it used Alembic (``metadata.create_all``, no version table) is upgraded like
any other: the service's first revision finds the tables it would create already there and keeps them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from alembic import command, context
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, text


@dataclass(frozen=True)
class AlembicMigrations:
    """A service's migrations: their folder, its version table and its advisory lock key (any fixed integer)."""

    migrations_dir: Path
    version_table: str
    lock_key: int

    def config(self, connection: Connection | None = None) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.migrations_dir))
        if connection is not None:
            config.attributes["connection"] = connection
        return config

    def upgrade(self, engine: Engine, revision: str = "head") -> None:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.lock_key})
            command.upgrade(self.config(connection), revision)

    def downgrade(self, engine: Engine, revision: str = "base") -> None:
        with engine.begin() as connection:
            command.downgrade(self.config(connection), revision)

    def current_revision(self, engine: Engine) -> str | None:
        with engine.connect() as connection:
            migration_context = MigrationContext.configure(connection, opts={"version_table": self.version_table})
            return migration_context.get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self.config()).get_current_head()

    def run_env(self) -> None:
        """The whole of a service's ``env.py``: run the migrations on the connection that :meth:`upgrade` or
        :meth:`downgrade` hands over (there is no other way in: the ``alembic`` command has no database)."""
        connection = context.config.attributes.get("connection")
        if connection is None:
            raise RuntimeError(
                f"run the migrations in {self.migrations_dir} through their service's AlembicMigrations "
                "(upgrade at start), not the alembic command"
            )
        # render_as_batch: SQLite alters a table by copying it.
        context.configure(connection=connection, version_table=self.version_table, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()

    def schema_differences(
        self, engine: Engine, metadata: MetaData, *, tables: Collection[str] | None = None
    ) -> list[object]:
        """What Alembic's autogenerate would change (column types included) to make the database match
        ``metadata``: empty when the migrations and the code agree.

        ``tables``: compare only these tables (a service's own, in a database shared with other services);
        None: every table.
        """
        opts: dict[str, object] = {"version_table": self.version_table, "compare_type": True}
        if tables is not None:
            wanted = set(tables)
            opts["include_name"] = lambda name, kind, _parents: kind != "table" or name in wanted
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection, opts=opts), metadata))
