"""data sets and quotas: datasets table, jobs.dataset_id, tenants' queued/device-hour/storage quotas

Revision ID: 2026_12_01_data
Revises: 2026_12_01_ux
Create Date: 2026-12-01 23:15:00+00:00

A tenant's uploaded JSONL data set is a registry object (stored by id under the artifacts root,
with its sha256); a job names the data set it trains on. Tenants gain a queued-jobs quota
(existing tenants: 1000), a monthly device-hour budget and a storage quota (NULL: unlimited),
and the time of their last claim (fair share serves the tenant that waited longest).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "2026_12_01_data"
down_revision: str | None = "2026_12_01_ux"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("duplicate_rows", sa.Integer(), nullable=False),
        sa.Column("label_counts", JSON, nullable=True),
        sa.Column("token_estimate", sa.BigInteger(), nullable=False),
        sa.Column("validation_sha256", sa.String(length=64), nullable=True),
        sa.Column("validation_bytes", sa.BigInteger(), nullable=True),
        sa.Column("validation_rows", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('classification', 'generation')", name=op.f("ck_datasets_kind_valid")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_datasets_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_index(op.f("ix_datasets_tenant_id"), "datasets", ["tenant_id"])
    op.create_index("ix_datasets_tenant_id_sha256", "datasets", ["tenant_id", "sha256"])
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("dataset_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_dataset_id"), ["dataset_id"])
        batch_op.create_foreign_key(op.f("fk_jobs_dataset_id_datasets"), "datasets", ["dataset_id"], ["id"])
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("max_queued", sa.Integer(), server_default="1000", nullable=False))
        batch_op.add_column(sa.Column("device_hours_per_month", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("max_storage_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("last_claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_check_constraint(op.f("ck_tenants_max_queued_nonneg"), "max_queued >= 0")


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_constraint(op.f("ck_tenants_max_queued_nonneg"), type_="check")
        batch_op.drop_column("last_claimed_at")
        batch_op.drop_column("max_storage_bytes")
        batch_op.drop_column("device_hours_per_month")
        batch_op.drop_column("max_queued")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("fk_jobs_dataset_id_datasets"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_dataset_id"))
        batch_op.drop_column("dataset_id")
    op.drop_index("ix_datasets_tenant_id_sha256", table_name="datasets")
    op.drop_index(op.f("ix_datasets_tenant_id"), table_name="datasets")
    op.drop_table("datasets")
