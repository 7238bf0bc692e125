"""metric history: every step's loss and lr (and repeated evaluations) per job

Revision ID: 2026_12_01_ux
Revises: 2026_12_01_jobkinds
Create Date: 2026-12-01 23:00:00+00:00

One row per (job, series name, optimizer step) with the epoch and the value: the training curves
`lorafleet job metrics` prints and the reports draw.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_01_ux"
down_revision: str | None = "2026_12_01_jobkinds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "metric_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Float(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_metric_history_job_id_jobs")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_metric_history_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metric_history")),
        sa.UniqueConstraint("job_id", "name", "step", name="uq_metric_history_job_id_name_step"),
    )
    op.create_index(op.f("ix_metric_history_job_id"), "metric_history", ["job_id"])
    op.create_index(op.f("ix_metric_history_tenant_id"), "metric_history", ["tenant_id"])


def downgrade() -> None:
    op.drop_table("metric_history")
