"""training metrics: per-epoch TFLOP/s and MFU, before-fine-tuning metrics, FLOPs per image

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("epochs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tflops", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("mfu", sa.Float(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("baseline_metrics", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("flops_per_image", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("flops_per_image")
        batch_op.drop_column("baseline_metrics")
    with op.batch_alter_table("epochs", schema=None) as batch_op:
        batch_op.drop_column("mfu")
        batch_op.drop_column("tflops")
