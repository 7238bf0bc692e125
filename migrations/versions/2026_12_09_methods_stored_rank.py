"""methods: an adapter's stored rank beside the rank it was trained at

Revision ID: 2026_12_09_stored_rank
Revises: 2026_12_09_qlora
Create Date: 2026-12-09 18:00:00+00:00

PiSSA and OLoRA train rank r on a residual base and store the update as a plain LoRA of rank 2r
on the untouched base (lora_engine/methods.py): `adapters.rank` stays the trained rank (the job's)
and `adapters.stored_rank` is the rank of the files. Every adapter before this stored its own rank.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_09_stored_rank"
down_revision: str | None = "2026_12_09_qlora"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("stored_rank", sa.Integer(), nullable=True))
    op.execute("UPDATE adapters SET stored_rank = rank")
    with op.batch_alter_table("adapters") as batch:
        batch.alter_column("stored_rank", existing_type=sa.Integer(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("stored_rank")
