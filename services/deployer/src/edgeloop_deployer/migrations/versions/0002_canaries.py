"""Canary rollouts: the canary runs and the answers they are judged on.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployer_canaries",
        sa.Column("canary_id", sa.String(32), primary_key=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("node_group", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("stable_version", sa.Integer, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("pod_annotations", sa.JSON, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("watch_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_deployer_canaries_key_started", "deployer_canaries", ["model_name", "node_group", "started_at"])
    op.create_table(
        "deployer_canary_samples",
        sa.Column("canary_id", sa.String(32), primary_key=True),
        sa.Column("sample_id", sa.String(128), primary_key=True),
        sa.Column("arm", sa.String(8), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deployer_canary_samples")
    op.drop_table("deployer_canaries")  # its index goes with it
