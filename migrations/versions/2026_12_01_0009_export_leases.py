"""export leases: an export is claimed with an attempt number and a lease the worker renews, so the reaper can
put back an export whose worker died and re-send one whose task the broker lost

Exports left `running` by a worker from before this revision have no lease: the reaper takes them for expired.
Queued ones have no enqueued_at: the reaper sends them (again; a duplicate task is harmless).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exports", schema=None) as batch_op:
        for column in ("enqueued_at", "lease_expires_at", "lease_owner", "failures", "attempt"):
            batch_op.drop_column(column)
