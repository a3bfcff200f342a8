"""Alembic environment of the trainer schema: run on the connection that ``adapters.schema.MIGRATIONS`` hands over."""

from edgeloop_trainer.adapters.schema import MIGRATIONS

MIGRATIONS.run_env()
