"""The label follower made exact: the label events counted (a redelivered one is not counted again), and the
training requests decided by the count and not yet known to be published.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
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
        "training_counted_labels",
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
    )
    # the old ids of a model, forgotten when its count asks for a training
    op.create_index("ix_training_counted_labels_model_counted", "training_counted_labels", ["model_name", "counted_at"])
    op.create_table(
        "training_label_requests",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("labels", sa.Integer, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("training_label_requests")
    op.drop_table("training_counted_labels")  # its index goes with it
