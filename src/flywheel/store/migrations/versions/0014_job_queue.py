"""The job queue in the database: claims counted and recorded, one retrain running and
one fresh retrain waiting at a time (unique partial indexes)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

ONE_RUNNING = "status = 'running' AND kind IN ('retrain', 'forget-retrain')"
ONE_WAITING = "status = 'queued' AND kind = 'retrain' AND attempts = 0"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("tries", sa.JSON(), nullable=True))
    # Jobs that ran before: one claim each (queued ones: none yet).
    op.execute("UPDATE jobs SET attempts = 1 WHERE started_at IS NOT NULL")
    # A process of the release before runs no job from the queue: what it left queued
    # or running is over (as that release's next start would have said).
    op.execute(
        "UPDATE jobs SET status = 'failed', finished_at = CURRENT_TIMESTAMP, "
        "error = 'interrupted: the server stopped before the job finished' "
        "WHERE status IN ('queued', 'running')"
    )
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
    for name, where in (
        ("ux_jobs_one_retrain_running", ONE_RUNNING),
        ("ux_jobs_one_retrain_waiting", ONE_WAITING),
    ):
        op.create_index(
            name, "jobs", ["status"], unique=True,
            sqlite_where=sa.text(where), postgresql_where=sa.text(where),
        )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ux_jobs_one_retrain_waiting", "jobs")
    op.drop_index("ux_jobs_one_retrain_running", "jobs")
    op.drop_index("ix_jobs_status_created", "jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("tries")
        batch_op.drop_column("attempts")
