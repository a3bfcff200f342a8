"""Labels and predictions on samples, and the indexes of the listing filters and the labeling queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "ingest_samples"


def _columns() -> list[sa.Column[object]]:
    """Fresh Column objects each call (a Column belongs to one table once added)."""
    return [
        sa.Column("predicted_label", sa.String(256), nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("scores", sa.JSON, nullable=True),
        sa.Column("model_name", sa.String(256), nullable=True),
        sa.Column("model_version", sa.Integer, nullable=True),
        # NOT NULL with a default: existing rows become "not a hard example" in the same statement
        sa.Column("hard_example", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("hard_example_reason", sa.Text, nullable=True),
        sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("labeled_by", sa.String(128), nullable=True),
        sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=True),
    ]


_INDEXES = {
    "ix_ingest_samples_device_received": ["device_id", "received_at", "sample_id"],
    "ix_ingest_samples_site_received": ["site_id", "received_at", "sample_id"],
    "ix_ingest_samples_label_received": ["label", "received_at", "sample_id"],
    "ix_ingest_samples_predicted_received": ["predicted_label", "received_at", "sample_id"],
    "ix_ingest_samples_confidence": ["confidence"],
}
QUEUE_INDEX = "ix_ingest_samples_labeling_queue"


def upgrade() -> None:
    for column in _columns():
        op.add_column(TABLE, column)  # ALTER TABLE ... ADD COLUMN on PostgreSQL and SQLite alike
    for name, columns in _INDEXES.items():
        op.create_index(name, TABLE, columns)
    # Partial: only unlabeled hard examples, each dialect in the form SQLAlchemy writes the queue query.
    op.create_index(
        QUEUE_INDEX,
        TABLE,
        ["received_at", "sample_id"],
        postgresql_where=sa.text("hard_example = true AND label IS NULL"),
        sqlite_where=sa.text("hard_example = 1 AND label IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(QUEUE_INDEX, table_name=TABLE)
    for name in _INDEXES:
        op.drop_index(name, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:  # SQLite: copies the table where it cannot drop in place
        for column in reversed(_columns()):
            batch.drop_column(column.name)
