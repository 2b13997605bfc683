"""val predictions: the best checkpoint's prediction for each validation image of a succeeded job, so the
dashboard can show the images of a confusion-matrix cell

Jobs that succeeded before this revision have none (the API answers 409 predictions_unavailable for them).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "val_predictions",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("ref", sa.Integer(), nullable=False),
        sa.Column("true_class", sa.Integer(), nullable=False),
        sa.Column("predicted_class", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_val_predictions_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "ref", name=op.f("pk_val_predictions")),
    )
    with op.batch_alter_table("val_predictions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_val_predictions_cell", ["job_id", "true_class", "predicted_class", "confidence"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("val_predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_val_predictions_cell")
    op.drop_table("val_predictions")
