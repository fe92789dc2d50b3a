"""verified artifacts: spec and serving-graph hashes; artifact folders relative to the project

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 23:50:00
"""

import hashlib
import re
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

versions = sa.table(
    "model_versions",
    sa.column("version", sa.Integer),
    sa.column("artifact_dir", sa.Text),
    sa.column("spec_sha256", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spec_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("graph_sha256", sa.String(length=64), nullable=True))
    conn = op.get_bind()
    for version, folder in conn.execute(sa.select(versions.c.version, versions.c.artifact_dir)):
        values: dict[str, str] = {}
        spec = Path(folder) / "spec.json"
        if folder and spec.is_file():  # the spec as it is now is what gets verified
            values["spec_sha256"] = hashlib.sha256(spec.read_bytes()).hexdigest()
        # Where flywheel put it (<project>/models/vN): relative, so a copied project
        # loads its own models.
        if folder and re.search(rf"(^|[/\\])models[/\\]v{version}$", folder):
            values["artifact_dir"] = f"models/v{version}"
        if values:
            conn.execute(versions.update().where(versions.c.version == version).values(**values))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("graph_sha256")
        batch_op.drop_column("spec_sha256")
