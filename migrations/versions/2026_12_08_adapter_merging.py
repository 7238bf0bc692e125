"""merged adapters: job kind `merge`, and `adapter_parents` (a merged adapter's parents)

Revision ID: 2026_12_08_merges
Revises: 2026_12_08_devices
Create Date: 2026-12-08 09:00:00+00:00

- jobs.kind gains 'merge' (`lorafleet adapter merge`: the worker merges the parents' LoRA
  matrices into a new adapter of the same base).
- `adapter_parents`: one row per (merged adapter, position) naming a parent and its weight; a
  new table, nothing existing changes. (`adapters.parent_adapter_id` stays the one adapter a
  training job continued from.)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_08_merges"
down_revision: str | None = "2026_12_08_devices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('train', 'evaluate', 'reevaluate')"
NEW_KINDS = "kind IN ('train', 'evaluate', 'reevaluate', 'merge')"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_kind_valid"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_kind_valid"), NEW_KINDS)
    op.create_table(
        "adapter_parents",
        sa.Column("adapter_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.CheckConstraint("position >= 0", name=op.f("ck_adapter_parents_position_nonneg")),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"],
                                name=op.f("fk_adapter_parents_adapter_id_adapters")),
        sa.ForeignKeyConstraint(["parent_id"], ["adapters.id"],
                                name=op.f("fk_adapter_parents_parent_id_adapters")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_adapter_parents_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("adapter_id", "position", name=op.f("pk_adapter_parents")),
        sa.UniqueConstraint("adapter_id", "parent_id", name="uq_adapter_parents_adapter_id_parent_id"),
    )
    op.create_index(op.f("ix_adapter_parents_parent_id"), "adapter_parents", ["parent_id"])
    op.create_index(op.f("ix_adapter_parents_tenant_id"), "adapter_parents", ["tenant_id"])


def downgrade() -> None:
    # The old schema has no merge jobs: refuse rather than delete a tenant's jobs and adapters.
    bind = op.get_bind()
    merges = bind.execute(sa.text("SELECT COUNT(*) FROM jobs WHERE kind = 'merge'")).scalar()
    if merges:
        raise RuntimeError(f"{merges} merge job(s) in the registry: the schema before "
                           f"{revision} cannot hold them (delete them first)")
    op.drop_index(op.f("ix_adapter_parents_tenant_id"), table_name="adapter_parents")
    op.drop_index(op.f("ix_adapter_parents_parent_id"), table_name="adapter_parents")
    op.drop_table("adapter_parents")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_kind_valid"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_kind_valid"), OLD_KINDS)
