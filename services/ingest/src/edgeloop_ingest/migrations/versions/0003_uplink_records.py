"""The arrivals of uplink records from edge agents: one row per record taken, keyed by its id.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "ingest_uplink_records"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("record_id", sa.String(36), primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image_included", sa.Boolean, nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
    )
    # the device's highest sequence (records arriving out of order are counted)
    op.create_index("ix_ingest_uplink_records_device_sequence", TABLE, ["site_id", "device_id", "sequence"])


def downgrade() -> None:
    op.drop_table(TABLE)
