"""workers: a worker whose own environment failed its jobs takes itself out of service, and says why

Revision ID: 2026_12_06_health
Revises: 2026_12_02_workers
Create Date: 2026-12-06 12:00:00+00:00

`unhealthy_reason` (and since when): set by a worker that handed back `unhealthy_after` jobs in a
row because its own working folder, data folder, model cache or artifacts root was missing or
unreadable; it claims nothing more and `lorafleet status` shows it `unhealthy`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_06_health"
down_revision: str | None = "2026_12_02_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("unhealthy_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("unhealthy_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("unhealthy_since")
        batch.drop_column("unhealthy_reason")
