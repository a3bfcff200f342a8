"""Alembic environment of the ingest schema: run on the connection that ``adapters.schema.MIGRATIONS`` hands over."""

from edgeloop_ingest.adapters.schema import MIGRATIONS

MIGRATIONS.run_env()
