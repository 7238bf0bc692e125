"""qlora: jobs.quantize (the quantisation a job's base loads with, "nf4"; NULL: full precision)

Revision ID: 2026_12_09_qlora
Revises: 2026_12_08_merges
Create Date: 2026-12-09 09:00:00+00:00

A job with `quantize: nf4` trains on a 4-bit base through bitsandbytes and is claimed only by a
CUDA worker. Every job before this loaded its base in full precision.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_09_qlora"
down_revision: str | None = "2026_12_08_merges"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("quantize", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("quantize")
