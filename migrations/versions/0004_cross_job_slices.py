"""cross-job slices and a flat claim: jobs.batch_key, tenant_turns (replaces jobs.last_claimed_at), indexes that answer the hot queries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""
from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _batch_key(params: dict) -> str:
    """As shared.ledger.jobs.batch_key computes it (copied: a migration must not change
    when the code does)."""
    shared = {name: value for name, value in (params or {}).items() if name != "seed"}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "tenant_turns",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("last_claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("model", "tenant", name=op.f("pk_tenant_turns")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_key", sa.String(length=64), server_default="", nullable=False))
        batch_op.drop_index("ix_jobs_tenant_model_claimed")
        batch_op.drop_index("ix_jobs_claim")
        batch_op.create_index("ix_jobs_tenant_claim", ["model", "tenant", "state", "priority", "created_at"],
                              unique=False)
        batch_op.create_index("ix_jobs_state_created", ["state", "created_at", "id"], unique=False)
        batch_op.create_index("ix_jobs_tenant_state_created", ["tenant", "state", "created_at", "id"], unique=False)
    connection = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("params", sa.JSON),
                    sa.column("batch_key", sa.String))
    for job_id, params in connection.execute(sa.select(jobs.c.id, jobs.c.params)).all():
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(batch_key=_batch_key(params)))
    connection.execute(sa.text(
        "INSERT INTO tenant_turns (model, tenant, last_claimed_at) "
        "SELECT model, tenant, MAX(last_claimed_at) FROM jobs GROUP BY model, tenant"))
    with op.batch_alter_table("jobs", schema=None) as batch_op:  # tenant_turns holds it now
        batch_op.drop_column("last_claimed_at")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_index("ix_jobs_tenant_state_created")
        batch_op.drop_index("ix_jobs_state_created")
        batch_op.drop_index("ix_jobs_tenant_claim")
        batch_op.create_index("ix_jobs_claim", ["model", "state", "priority", "created_at"], unique=False)
        batch_op.create_index("ix_jobs_tenant_model_claimed", ["tenant", "model", "last_claimed_at"], unique=False)
        batch_op.drop_column("batch_key")
    op.drop_table("tenant_turns")
