"""Alembic environment of the deployer schema: run on the connection that ``adapters.schema`` hands over."""

from __future__ import annotations

from alembic import context
from edgeloop_deployer.adapters.schema import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the deployer migrations through edgeloop_deployer.adapters.schema (upgrade_schema)")

context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
