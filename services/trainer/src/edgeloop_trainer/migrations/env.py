"""Alembic environment of the trainer schema: run on the connection that ``adapters.schema`` hands over."""

from __future__ import annotations

from alembic import context
from edgeloop_trainer.adapters.schema import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the trainer migrations through edgeloop_trainer.adapters.schema (upgrade_schema)")

context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
