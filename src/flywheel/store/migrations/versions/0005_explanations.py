"""explanations cache

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:25:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "explanations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("input_hash", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("png_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_version"], ["model_versions.version"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_explanations_input_hash", "explanations", ["input_hash"])
    op.create_index(
        "ux_explanations_input_version_target",
        "explanations",
        ["input_hash", "model_version", "target"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ux_explanations_input_version_target", table_name="explanations")
    op.drop_index("ix_explanations_input_hash", table_name="explanations")
    op.drop_table("explanations")
