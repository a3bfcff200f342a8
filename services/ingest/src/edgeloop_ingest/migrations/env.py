"""Alembic environment of the ingest schema: run on the connection that ``adapters.schema`` hands over."""

from __future__ import annotations

from alembic import context
from edgeloop_ingest.adapters.schema import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the ingest migrations through edgeloop_ingest.adapters.schema (upgrade_schema)")

context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
