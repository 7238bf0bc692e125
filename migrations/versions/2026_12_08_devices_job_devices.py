"""devices: jobs.devices (how many devices a job spans) and workers.devices (how many a worker owns)

Revision ID: 2026_12_08_devices
Revises: 2026_12_08_grad_ckpt
Create Date: 2026-12-08 09:00:00+00:00

A job with `devices: N` is claimed only by a worker process that owns at least N devices, and
counts N against its tenant's running quota. Every job and worker before this ran on one device.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_08_devices"
down_revision: str | None = "2026_12_08_grad_ckpt"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("devices", sa.Integer(), server_default="1", nullable=False))
        batch_op.create_check_constraint(op.f("ck_jobs_devices_positive"), "devices >= 1")
    with op.batch_alter_table("workers") as batch_op:
        batch_op.add_column(sa.Column("devices", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch_op:
        batch_op.drop_column("devices")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_devices_positive"), type_="check")
        batch_op.drop_column("devices")
