"""Alembic environment of the deployer schema: run on the connection that ``adapters.schema.MIGRATIONS`` hands over."""

from edgeloop_deployer.adapters.schema import MIGRATIONS

MIGRATIONS.run_env()
