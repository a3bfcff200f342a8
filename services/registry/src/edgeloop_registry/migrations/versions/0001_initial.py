"""The registry's tables: models, versions, aliases, alias moves and the outbox.

Revision ID: 0001_initial
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "registry_models",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_table(
        "registry_model_versions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.BigInteger(), sa.ForeignKey("registry_models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "registering",
                "ready",
                "failed",
                "archived",
                name="registry_version_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("artifact_uri", sa.String(1024), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("reference_stats", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("dataset_snapshot_id", sa.String(128), nullable=True),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("train_started_at", Timestamp, nullable=True),
        sa.Column("train_duration_s", sa.Float(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("model_id", "version", name="uq_registry_model_versions_model_version"),
    )
    op.create_table(
        "registry_aliases",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.BigInteger(), sa.ForeignKey("registry_models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("node_group", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("moved_at", Timestamp, nullable=False),
        sa.Column("moved_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.UniqueConstraint("model_id", "alias", "node_group", name="uq_registry_aliases_model_alias_group"),
        sa.ForeignKeyConstraint(
            ["model_id", "version"],
            ["registry_model_versions.model_id", "registry_model_versions.version"],
            name="fk_registry_aliases_version",
        ),
    )
    # NULLs are distinct in a unique constraint: the model-wide alias (node_group NULL) needs its own index.
    op.create_index(
        "uq_registry_aliases_model_alias_modelwide",
        "registry_aliases",
        ["model_id", "alias"],
        unique=True,
        postgresql_where=sa.text("node_group IS NULL"),
        sqlite_where=sa.text("node_group IS NULL"),
    )
    op.create_table(
        "registry_alias_moves",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.BigInteger(), sa.ForeignKey("registry_models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("node_group", sa.String(64), nullable=True),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "move",
                "promotion",
                "rollback",
                name="registry_move_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("moved_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("moved_at", Timestamp, nullable=False),
    )
    op.create_index("ix_registry_alias_moves_alias", "registry_alias_moves", ["model_id", "alias", "node_group", "id"])
    op.create_table(
        "registry_outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("published_at", Timestamp, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_registry_outbox_pending",
        "registry_outbox",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_registry_outbox_pending", table_name="registry_outbox")
    op.drop_table("registry_outbox")
    op.drop_index("ix_registry_alias_moves_alias", table_name="registry_alias_moves")
    op.drop_table("registry_alias_moves")
    op.drop_index("uq_registry_aliases_model_alias_modelwide", table_name="registry_aliases")
    op.drop_table("registry_aliases")
    op.drop_table("registry_model_versions")
    op.drop_table("registry_models")
