"""access control: projects (every existing row moves into `default`), API keys, the audit log; per-project
model names and idempotency keys; dataset sizes for the storage quota; a finished job outlives its dataset

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEFAULT = "default"


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_projects")),
    )
    op.bulk_insert(projects, [{"name": DEFAULT, "created_at": datetime.now(UTC)}])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project"], ["projects.name"], name=op.f("fk_api_keys_project_projects"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_project"), ["project"], unique=False)

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("object_type", sa.String(length=30), nullable=False),
        sa.Column("object_id", sa.String(length=200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_project"), ["project"], unique=False)

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project", sa.String(length=64), nullable=False, server_default=DEFAULT))
        batch_op.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.create_foreign_key(
            batch_op.f("fk_datasets_project_projects"), "projects", ["project"], ["name"], ondelete="RESTRICT"
        )
        batch_op.create_index(batch_op.f("ix_datasets_project"), ["project"], unique=False)
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.alter_column("project", server_default=None)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project", sa.String(length=64), nullable=False, server_default=DEFAULT))
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_project_projects"), "projects", ["project"], ["name"], ondelete="RESTRICT"
        )
        batch_op.create_index(batch_op.f("ix_jobs_project"), ["project"], unique=False)
        batch_op.drop_constraint(batch_op.f("uq_jobs_idempotency_key"), type_="unique")
        batch_op.create_unique_constraint("uq_jobs_project_idempotency_key", ["project", "idempotency_key"])
        batch_op.drop_constraint(batch_op.f("fk_jobs_dataset_id_datasets"), type_="foreignkey")
        batch_op.alter_column("dataset_id", existing_type=sa.Uuid(), nullable=True)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_dataset_id_datasets"), "datasets", ["dataset_id"], ["id"], ondelete="SET NULL"
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("project", server_default=None)

    # Model names become per project: (project, name) is the key, and versions point at it.
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_constraint("fk_model_versions_model_name_registered_models", type_="foreignkey")
        batch_op.drop_constraint("uq_model_versions_model_name_version", type_="unique")
        batch_op.add_column(sa.Column("project", sa.String(length=64), nullable=False, server_default=DEFAULT))
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project", sa.String(length=64), nullable=False, server_default=DEFAULT))
        batch_op.drop_constraint("pk_registered_models", type_="primary")
        batch_op.create_primary_key("pk_registered_models", ["project", "name"])
        batch_op.create_foreign_key(
            batch_op.f("fk_registered_models_project_projects"),
            "projects",
            ["project"],
            ["name"],
            ondelete="RESTRICT",
        )
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.alter_column("project", server_default=None)
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.alter_column("project", server_default=None)
        batch_op.create_unique_constraint(
            "uq_model_versions_project_model_name_version", ["project", "model_name", "version"]
        )
        batch_op.create_foreign_key(
            "fk_model_versions_project_model_name_registered_models",
            "registered_models",
            ["project", "model_name"],
            ["project", "name"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_constraint("fk_model_versions_project_model_name_registered_models", type_="foreignkey")
        batch_op.drop_constraint("uq_model_versions_project_model_name_version", type_="unique")
        batch_op.drop_column("project")
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_registered_models_project_projects"), type_="foreignkey")
        batch_op.drop_constraint("pk_registered_models", type_="primary")
        batch_op.create_primary_key("pk_registered_models", ["name"])
        batch_op.drop_column("project")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_model_versions_model_name_version", ["model_name", "version"])
        batch_op.create_foreign_key(
            "fk_model_versions_model_name_registered_models",
            "registered_models",
            ["model_name"],
            ["name"],
            ondelete="CASCADE",
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_dataset_id_datasets"), type_="foreignkey")
        batch_op.alter_column("dataset_id", existing_type=sa.Uuid(), nullable=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_dataset_id_datasets"), "datasets", ["dataset_id"], ["id"], ondelete="RESTRICT"
        )
        batch_op.drop_constraint("uq_jobs_project_idempotency_key", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_jobs_idempotency_key"), ["idempotency_key"])
        batch_op.drop_index(batch_op.f("ix_jobs_project"))
        batch_op.drop_constraint(batch_op.f("fk_jobs_project_projects"), type_="foreignkey")
        batch_op.drop_column("project")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_datasets_project"))
        batch_op.drop_constraint(batch_op.f("fk_datasets_project_projects"), type_="foreignkey")
        batch_op.drop_column("size_bytes")
        batch_op.drop_column("project")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_project"))
        batch_op.drop_index(batch_op.f("ix_audit_events_at"))
    op.drop_table("audit_events")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_project"))
    op.drop_table("api_keys")
    op.drop_table("projects")
