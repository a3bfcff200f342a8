"""The deployments and rollouts tables as the deployer first created them (before it used Alembic).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A table already there was created by the deployer before Alembic (metadata.create_all): this very table,
    # with its index, kept as it is.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "deployer_deployments" not in existing:
        op.create_table(
            "deployer_deployments",
            sa.Column("model_name", sa.String(128), primary_key=True),
            sa.Column("node_group", sa.String(64), primary_key=True),
            sa.Column("desired_version", sa.Integer, nullable=True),
            sa.Column("actual_version", sa.Integer, nullable=True),
            sa.Column("previous_version", sa.Integer, nullable=True),
            sa.Column("phase", sa.String(16), nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "deployer_rollouts" not in existing:
        op.create_table(
            "deployer_rollouts",
            sa.Column("rollout_id", sa.String(32), primary_key=True),
            sa.Column("model_name", sa.String(128), nullable=False),
            sa.Column("node_group", sa.String(64), nullable=False),
            sa.Column("version", sa.Integer, nullable=True),
            sa.Column("action", sa.String(16), nullable=False),
            sa.Column("trigger", sa.String(16), nullable=False),
            sa.Column("phase", sa.String(16), nullable=False),
            sa.Column("detail", sa.Text, nullable=False),
            sa.Column("pod_annotations", sa.JSON, nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        )
        op.create_index(
            "ix_deployer_rollouts_key_started", "deployer_rollouts", ["model_name", "node_group", "started_at"]
        )


def downgrade() -> None:
    op.drop_table("deployer_rollouts")  # its index goes with it
    op.drop_table("deployer_deployments")
