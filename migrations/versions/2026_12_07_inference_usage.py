"""inference_usage: what each request to the inference server cost its tenant

Revision ID: 2026_12_07_inference_usage
Revises: 2026_12_07_webhooks
Create Date: 2026-12-07 15:00:00+00:00

`lorafleet serve` (worker/serve) records one row per request: tokens in and out and the
device-seconds of its share of the forward passes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_07_inference_usage"
down_revision: str | None = "2026_12_07_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inference_usage",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("adapter_id", sa.String(length=36), nullable=True),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("route", sa.String(length=32), nullable=False),
        sa.Column("device", sa.String(length=128), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("device_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"],
                                name=op.f("fk_inference_usage_adapter_id_adapters")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_inference_usage_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_usage")),
    )
    op.create_index(op.f("ix_inference_usage_tenant_id"), "inference_usage", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_inference_usage_tenant_id"), table_name="inference_usage")
    op.drop_table("inference_usage")
