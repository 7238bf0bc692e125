"""workers: every worker process registers, heartbeats (idle too) and marks itself stopped

Revision ID: 2026_12_02_workers
Revises: 2026_12_01_reports
Create Date: 2026-12-02 03:30:00+00:00

One row per worker process (id: the worker id its leases carry), so `lorafleet status` shows
idle workers too, and which are alive, lost (missed heartbeats) or stopped.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_02_workers"
down_revision: str | None = "2026_12_01_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(length=255), nullable=False),
        sa.Column("device_kind", sa.String(length=16), nullable=False),
        sa.Column("device_name", sa.String(length=255), nullable=False),
        sa.Column("beat_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_job_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(["current_job_id"], ["jobs.id"], name=op.f("fk_workers_current_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_last_seen"), "workers", ["last_seen"])


def downgrade() -> None:
    op.drop_table("workers")
