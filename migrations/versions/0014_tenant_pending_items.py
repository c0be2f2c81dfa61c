"""tenant_pending_items: each tenant's pending items, kept in shards by every change of
its jobs' pending counters, so that the pending quota reads a few rows. It counted
them at every submit near the cap, a SUM over the tenant's open jobs: tens of ms a
submit for a tenant with 50,000 one-item jobs queued.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_pending_items",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("pending_items", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "shard", name=op.f("pk_tenant_pending_items")),
    )
    op.execute("INSERT INTO tenant_pending_items (tenant, shard, pending_items) "
               "SELECT tenant, 0, SUM(pending_items) FROM jobs GROUP BY tenant HAVING SUM(pending_items) <> 0")


def downgrade() -> None:
    op.drop_table("tenant_pending_items")
