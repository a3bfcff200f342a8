"""Which side answered each picture (``served_by``: edge or cloud), and the indexes of the console's reads:
the listing filtered by it, the overview's counts per site and time bucket, the devices seen, and the labeling
queue per site and its count.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "ingest_samples"
_INDEXES = {
    # the listing filtered by who answered, in the page order
    "ix_ingest_samples_served_received": ["served_by", "received_at", "sample_id"],
    # the devices seen: count and newest arrival per (site, device), read from the index alone
    "ix_ingest_samples_site_device_received": ["site_id", "device_id", "received_at"],
    # the overview's counts per time bucket and site (covering: read without the table)
    "ix_ingest_samples_received_site_labels": ["received_at", "site_id", "label", "predicted_label"],
}
# The labeling queue, partial like the queue's index of revision 0002 (only unlabeled hard examples): one site's
# queue in page order, and the count (covering, so COUNT reads the index alone; SQLite's planner picks it over
# the label index only when it covers the query).
PARTIAL_INDEXES = {
    "ix_ingest_samples_site_labeling_queue": ["site_id", "received_at", "sample_id"],
    "ix_ingest_samples_labeling_queue_count": ["site_id", "label", "hard_example"],
}


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("served_by", sa.String(8), nullable=True))  # null: not answered yet
    for name, columns in _INDEXES.items():
        op.create_index(name, TABLE, columns)
    for name, columns in PARTIAL_INDEXES.items():
        op.create_index(
            name,
            TABLE,
            columns,
            postgresql_where=sa.text("hard_example = true AND label IS NULL"),
            sqlite_where=sa.text("hard_example = 1 AND label IS NULL"),
        )


def downgrade() -> None:
    for name in (*PARTIAL_INDEXES, *_INDEXES):
        op.drop_index(name, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:  # SQLite: copies the table where it cannot drop in place
        batch.drop_column("served_by")
