"""Feedback keys: the client's key of an answer (an Idempotency-Key, an annotation's id)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("external_id", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("body_sha256", sa.String(64), nullable=True))
        batch_op.create_index("ix_feedback_external_id", ["external_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_external_id")
        batch_op.drop_column("body_sha256")
        batch_op.drop_column("external_id")
