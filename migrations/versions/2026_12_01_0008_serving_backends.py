"""serving backends: a pin or an alias may name the backend that serves it (torch, onnx, int8)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pinned_backend", sa.String(length=10), nullable=True))
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backend", sa.String(length=10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.drop_column("backend")
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.drop_column("pinned_backend")
