"""files: datasets.format, the rows' format (text_label | prompt_completion | chat)

Revision ID: 2026_12_07_files
Revises: 2026_12_07_apikeys
Create Date: 2026-12-07 09:00:00+00:00

A data set's format decides its task kind and how a job reads it: OpenAI's chat rows are rendered
with the base model's chat template when the job starts. Every data set stored before held either
text/label rows (classification) or prompt/completion rows (generation): filled in from its kind.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_07_files"
down_revision: str | None = "2026_12_07_apikeys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DATASET_FORMATS = "format IN ('text_label', 'prompt_completion', 'chat')"


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch_op:
        batch_op.add_column(sa.Column("format", sa.String(length=24), server_default="text_label",
                                      nullable=False))
        batch_op.create_check_constraint(op.f("ck_datasets_format_valid"), DATASET_FORMATS)
    op.execute("UPDATE datasets SET format = 'prompt_completion' WHERE kind = 'generation'")


def downgrade() -> None:
    # A chat data set stays listed; the old code refuses its rows by name ('messages') if a job uses it.
    with op.batch_alter_table("datasets") as batch_op:
        batch_op.drop_constraint(op.f("ck_datasets_format_valid"), type_="check")
        batch_op.drop_column("format")
