"""serving: named aliases per model (`name@alias`) and the history of pin and alias changes (for rollback)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=100), nullable=False),
        sa.Column("alias", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project", "model_name"],
            ["registered_models.project", "registered_models.name"],
            name="fk_model_aliases_project_model_name_registered_models",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project", "model_name", "version"],
            ["model_versions.project", "model_versions.model_name", "model_versions.version"],
            name="fk_model_aliases_project_model_name_version_model_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project", "model_name", "alias", name=op.f("pk_model_aliases")),
    )
    op.create_table(
        "serving_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=100), nullable=False),
        sa.Column("target", sa.String(length=50), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_serving_changes")),
    )
    with op.batch_alter_table("serving_changes", schema=None) as batch_op:
        batch_op.create_index("ix_serving_changes_project_model_name", ["project", "model_name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("serving_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_serving_changes_project_model_name")
    op.drop_table("serving_changes")
    op.drop_table("model_aliases")
