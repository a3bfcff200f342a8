"""Alembic environment of the registry.

The service runs the migrations itself at start (``adapters.migrations.MIGRATIONS``), handing over its connection
in ``config.attributes["connection"]``. From the command line (``alembic -c services/registry/alembic.ini ...``)
the database is ``-x url=...``, else ``sqlalchemy.url``, else the registry's settings (``EDGELOOP_DATABASE_URL``,
``EDGELOOP_MODE``).
"""

from __future__ import annotations

from alembic import context
from edgeloop_registry.adapters.db import Base, create_sql_engine
from edgeloop_registry.adapters.migrations import MIGRATIONS
from sqlalchemy.engine import Connection

config = context.config


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=MIGRATIONS.version_table,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url_from_settings() -> str:
    from edgeloop_registry.settings import Settings

    return Settings().resolved_database_url()


def run_migrations_online() -> None:
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        _configure_and_run(given)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_sql_engine(url or _url_from_settings())
    try:
        with engine.connect() as connection:
            _configure_and_run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against a database")
run_migrations_online()
