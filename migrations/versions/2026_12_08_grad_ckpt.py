"""gradient checkpointing: the job's switch, and what it trades in each attempt's usage

Revision ID: 2026_12_08_grad_ckpt
Revises: 2026_12_08_job_tracking
Create Date: 2026-12-08 09:00:00+00:00

`jobs.gradient_checkpointing` is denormalised from the spec (reports group by it);
`usage.activation_memory_bytes` (peak minus the memory once the model was loaded) and
`usage.step_seconds` (device time per optimizer step) are what `report compare` shows of it.
Rows written before stay NULL / false: the reports show "-" for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_08_grad_ckpt"
down_revision: str | None = "2026_12_08_job_tracking"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gradient_checkpointing", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("activation_memory_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("step_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("step_seconds")
        batch.drop_column("activation_memory_bytes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("gradient_checkpointing")
