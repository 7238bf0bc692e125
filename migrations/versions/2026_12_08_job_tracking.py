"""job_tracking: a job's opt-out of the operator's MLflow tracking

Revision ID: 2026_12_08_job_tracking
Revises: 2026_12_07_inference_usage
Create Date: 2026-12-08 09:00:00+00:00

`jobs.tracking` is false when the tenant opted the job out through the API's `integrations`
(`{"type": "mlflow", "mlflow": {"enabled": false}}`) or the CLI's `job submit --no-tracking`;
existing jobs keep the default (tracked, where the operator set a tracking server).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_08_job_tracking"
down_revision: str | None = "2026_12_07_inference_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("tracking", sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("tracking")
