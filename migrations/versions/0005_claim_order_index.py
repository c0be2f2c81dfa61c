"""the claim order as an index: jobs (model, tenant, state, priority DESC, created_at, id), read in order with no sort

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_tenant_claim")
        batch_op.create_index("ix_jobs_claim_order", ["model", "tenant", "state", sa.text("priority DESC"),
                                                      "created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_claim_order")
        batch_op.create_index("ix_jobs_tenant_claim", ["model", "tenant", "state", "priority", "created_at"],
                              unique=False)
