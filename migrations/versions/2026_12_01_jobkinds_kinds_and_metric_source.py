"""job kinds and metric sources: jobs.kind, metrics.source, metrics.created_at

Revision ID: 2026_12_01_jobkinds
Revises: 0001
Create Date: 2026-12-01 22:40:00+00:00

A job is now one of three kinds (train | evaluate | reevaluate); existing rows are training
jobs (server default 'train'). A metric row records where it came from (job | reevaluation;
existing rows: 'job') and when it was written (existing rows: the migration's time).

The old unique (job_id, split, name) becomes a partial unique index over source 'job' rows, and
a second one, (job_id, adapter_id, split, name) over source 'reevaluation' rows, lets one
reevaluate job hold the scores of many adapters.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_01_jobkinds"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_KINDS = "kind IN ('train', 'evaluate', 'reevaluate')"
METRIC_SOURCES = "source IN ('job', 'reevaluation')"


def _partial(source: str) -> dict[str, sa.TextClause]:
    where = sa.text(f"source = '{source}'")
    return {"sqlite_where": where, "postgresql_where": where}


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="train", nullable=False))
        batch_op.create_check_constraint(op.f("ck_jobs_kind_valid"), JOB_KINDS)

    with op.batch_alter_table("metrics") as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=16), server_default="job", nullable=False))
        batch_op.add_column(
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)
        )
        batch_op.create_check_constraint(op.f("ck_metrics_source_valid"), METRIC_SOURCES)
        batch_op.drop_constraint("uq_metrics_job_id_split_name", type_="unique")
    op.create_index("uq_metrics_job_id_split_name", "metrics", ["job_id", "split", "name"], unique=True,
                    **_partial("job"))
    op.create_index("uq_metrics_job_id_adapter_id_split_name", "metrics",
                    ["job_id", "adapter_id", "split", "name"], unique=True, **_partial("reevaluation"))


def downgrade() -> None:
    # Re-evaluation rows have no place in the old schema (one row per job, split, name).
    op.execute("DELETE FROM metrics WHERE source = 'reevaluation'")
    op.drop_index("uq_metrics_job_id_adapter_id_split_name", table_name="metrics")
    op.drop_index("uq_metrics_job_id_split_name", table_name="metrics")
    with op.batch_alter_table("metrics") as batch_op:
        batch_op.create_unique_constraint("uq_metrics_job_id_split_name", ["job_id", "split", "name"])
        batch_op.drop_constraint(op.f("ck_metrics_source_valid"), type_="check")
        batch_op.drop_column("created_at")
        batch_op.drop_column("source")

    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_kind_valid"), type_="check")
        batch_op.drop_column("kind")
