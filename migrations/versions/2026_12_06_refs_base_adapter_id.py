"""refs: jobs.base_adapter_id, a tenant's own full fine-tune used as a base model, by id

Revision ID: 2026_12_06_refs
Revises: 2026_12_06_health
Create Date: 2026-12-06 09:00:00+00:00

A job that trains on one of its tenant's full fine-tunes names it by adapter id (never by its
folder under the artifacts root); the worker loads that adapter's folder after checking its
sha256, as it does for `init_from_adapter_id`. Existing jobs have none (NULL).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_06_refs"
down_revision: str | None = "2026_12_06_health"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("base_adapter_id", sa.String(length=36), nullable=True))
        batch_op.create_foreign_key(op.f("fk_jobs_base_adapter_id_adapters"), "adapters", ["base_adapter_id"],
                                    ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("fk_jobs_base_adapter_id_adapters"), type_="foreignkey")
        batch_op.drop_column("base_adapter_id")
