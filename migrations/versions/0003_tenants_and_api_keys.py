"""tenants and API keys: jobs.tenant, jobs.last_claimed_at (fair claims), api_keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(length=64), server_default="default", nullable=False))
        batch_op.add_column(sa.Column("last_claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_index("ix_jobs_idempotency_key")
        batch_op.create_index("ix_jobs_tenant_idempotency_key", ["tenant", "idempotency_key"], unique=True)
        batch_op.create_index("ix_jobs_tenant_created", ["tenant", "created_at", "id"], unique=False)
        batch_op.create_index("ix_jobs_tenant_model_claimed", ["tenant", "model", "last_claimed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_tenant_model_claimed")
        batch_op.drop_index("ix_jobs_tenant_created")
        batch_op.drop_index("ix_jobs_tenant_idempotency_key")
        batch_op.create_index("ix_jobs_idempotency_key", ["idempotency_key"], unique=True)
        batch_op.drop_column("last_claimed_at")
        batch_op.drop_column("tenant")
    op.drop_table("api_keys")
