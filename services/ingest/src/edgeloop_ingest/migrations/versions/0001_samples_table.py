"""The samples table as ingest first created it (before it used Alembic).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("ingest_samples"):
        return  # created by ingest before Alembic (metadata.create_all): this very table, kept as it is
    op.create_table(
        "ingest_samples",
        sa.Column("sample_id", sa.String(36), primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("ingress", sa.String(8), nullable=False),
        sa.Column("mqtt_topic", sa.String(256), nullable=True),
        sa.Column("blob_uri", sa.String(1024), nullable=False),
    )
    op.create_index("ix_ingest_samples_device_sha256", "ingest_samples", ["device_id", "sha256"])
    op.create_index("ix_ingest_samples_received_at", "ingest_samples", ["received_at"])


def downgrade() -> None:
    op.drop_table("ingest_samples")
