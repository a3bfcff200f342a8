"""The newest dead letters of the whole system, for the people who run it (``GET /v1/dead-letters``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "ingest_dead_letters"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("error_type", sa.String(128), nullable=False),
        sa.Column("original_topic", sa.String(256), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=True),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("mqtt_topic", sa.String(256), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ingest_dead_letters_site_position", TABLE, ["site_id", "position"])


def downgrade() -> None:
    op.drop_table(TABLE)
