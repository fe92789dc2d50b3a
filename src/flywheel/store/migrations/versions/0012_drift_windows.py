"""Drift windows: each closed window of production calls, its tests and accuracies

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_windows",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "model_version", sa.Integer(), sa.ForeignKey("model_versions.version"), nullable=False
        ),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_id", sa.String(36), nullable=False),
        sa.Column("last_id", sa.String(36), nullable=False),
        sa.Column("tests", sa.JSON(), nullable=False),
        sa.Column("alarm", sa.Boolean(), nullable=False),
        sa.Column("estimated_accuracy", sa.Float(), nullable=True),
        sa.Column("observed_accuracy", sa.Float(), nullable=True),
        sa.Column("answered", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_drift_windows_model_version", "drift_windows", ["model_version"])


def downgrade() -> None:
    op.drop_index("ix_drift_windows_model_version", table_name="drift_windows")
    op.drop_table("drift_windows")
