"""jobs for the tenants' API: state `paused`, pause_requested, metadata, suffix, validation data set

Revision ID: 2026_12_07_jobs_api
Revises: 2026_12_07_apikeys
Create Date: 2026-12-07 09:00:00+00:00

- `paused`: a job its tenant set aside (at a checkpoint when it was running); nothing claims or
  re-dispatches it until it is resumed. `pause_requested` is the running job's flag (existing
  rows: false), read by its worker's heartbeat like `cancel_requested`.
- `metadata` (the tenant's labels, JSON), `suffix` (its adapter's model name), and
  `validation_dataset_id` (a tenant's file that replaces the data's own held-out split).
- `ix_jobs_tenant_id_created_at_id`: a tenant's jobs paged newest first by key.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "2026_12_07_jobs_api"
down_revision: str | None = "2026_12_07_files"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATES = "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"
NEW_STATES = "state IN ('queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled')"
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("pause_requested", sa.Boolean(), server_default=sa.false(),
                                      nullable=False))
        batch_op.add_column(sa.Column("metadata", JSON, nullable=True))
        batch_op.add_column(sa.Column("suffix", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("validation_dataset_id", sa.String(length=36), nullable=True))
        batch_op.create_foreign_key(op.f("fk_jobs_validation_dataset_id_datasets"), "datasets",
                                    ["validation_dataset_id"], ["id"])
        batch_op.drop_constraint(op.f("ck_jobs_state_valid"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_state_valid"), NEW_STATES)
        batch_op.create_index("ix_jobs_tenant_id_created_at_id", ["tenant_id", "created_at", "id"])


def downgrade() -> None:
    # The old schema has no `paused`: a paused job goes back to the queue, where it was before.
    op.execute("UPDATE jobs SET state = 'queued' WHERE state = 'paused'")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_tenant_id_created_at_id")
        batch_op.drop_constraint(op.f("ck_jobs_state_valid"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_state_valid"), OLD_STATES)
        batch_op.drop_constraint(op.f("fk_jobs_validation_dataset_id_datasets"), type_="foreignkey")
        batch_op.drop_column("validation_dataset_id")
        batch_op.drop_column("suffix")
        batch_op.drop_column("metadata")
        batch_op.drop_column("pause_requested")
