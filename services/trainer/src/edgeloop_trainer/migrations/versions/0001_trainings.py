"""The trainings, training requests and label counts tables as the trainer first created them (before Alembic).

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
    # A table already there was created by the trainer before Alembic (metadata.create_all): this very table,
    # with its indexes, kept as it is.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "trainings" not in existing:
        op.create_table(
            "trainings",
            sa.Column("run_id", sa.String(64), primary_key=True),
            sa.Column("model_name", sa.String(200), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempt", sa.Integer, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("progress", sa.JSON, nullable=False),
            sa.Column("snapshot_id", sa.String(64), nullable=True),
            sa.Column("candidate_version", sa.Integer, nullable=True),
            sa.Column("result", sa.JSON, nullable=True),
            sa.Column("error", sa.Text, nullable=True),
        )
        # The queue's rules, held by the database: at most one queued and one running run per model.
        for state in ("queued", "running"):
            op.create_index(
                f"trainings_one_{state}_per_model",
                "trainings",
                ["model_name"],
                unique=True,
                sqlite_where=sa.text(f"state = '{state}'"),
                postgresql_where=sa.text(f"state = '{state}'"),
            )
        op.create_index("trainings_by_model_created", "trainings", ["model_name", "created_at"])
    if "training_requests" not in existing:
        op.create_table(
            "training_requests",
            sa.Column("request_id", sa.String(200), primary_key=True),
            sa.Column("run_id", sa.String(64), sa.ForeignKey("trainings.run_id"), nullable=False),
            sa.Column("model_name", sa.String(200), nullable=False),
            sa.Column("reason", sa.String(32), nullable=False),
            sa.Column("requested_by", sa.String(200), nullable=False),
            sa.Column("detail", sa.Text, nullable=False),
            sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        )
        op.create_index("ix_training_requests_run_id", "training_requests", ["run_id"])
    if "training_label_counts" not in existing:
        op.create_table(
            "training_label_counts",
            sa.Column("model_name", sa.String(200), primary_key=True),
            sa.Column("labels_since_request", sa.Integer, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("training_label_counts")
    op.drop_table("training_requests")  # before trainings: its foreign key points there
    op.drop_table("trainings")
