"""report indexes: what the benchmark, cost and compare queries look up

Revision ID: 2026_12_01_reports
Revises: 2026_12_01_data
Create Date: 2026-12-01 23:00:00+00:00

- adapters (tenant_id, task, created_at): the benchmark's latest/best pick per tenant and task;
- jobs (created_at): --since/--until;
- jobs (kind, task, base_model): the untuned baselines (kind 'evaluate') per task and base;
- metrics (adapter_id, name, created_at) WHERE source = 'reevaluation': an adapter's latest
  re-evaluation (the benchmark's drift column).
See bench/bench_reports.py for the plans and timings with and without them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_01_reports"
down_revision: str | None = "2026_12_01_data"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REEVALUATION = sa.text("source = 'reevaluation'")


def upgrade() -> None:
    op.create_index("ix_adapters_tenant_id_task_created_at", "adapters", ["tenant_id", "task", "created_at"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_kind_task_base_model", "jobs", ["kind", "task", "base_model"])
    op.create_index(
        "ix_metrics_reevaluation_adapter_id_name_created_at",
        "metrics",
        ["adapter_id", "name", "created_at"],
        sqlite_where=REEVALUATION,
        postgresql_where=REEVALUATION,
    )


def downgrade() -> None:
    op.drop_index("ix_metrics_reevaluation_adapter_id_name_created_at", table_name="metrics")
    op.drop_index("ix_jobs_kind_task_base_model", table_name="jobs")
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    op.drop_index("ix_adapters_tenant_id_task_created_at", table_name="adapters")
