"""The claim-order index holds only the jobs with an item left to claim, keyed without
their state: (model, tenant, priority DESC, created_at, id) WHERE pending_items > 0.

It held every job of the ledger, finished ones too, under its state: each probe for a
tenant's work (every claim probes the tenants whose turn comes first) sought its way
through the history, one seek per open state, and a claim moved a job's entry from
queued to running. Now it holds what is queued, a probe is one seek into it, and a
claim that takes a one-item job's last pending item deletes the entry.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

NAME = "ix_jobs_claim_order"
HAS_PENDING_ITEMS = sa.text("pending_items > 0")


def upgrade() -> None:
    op.drop_index(NAME, table_name="jobs")
    op.create_index(NAME, "jobs", ["model", "tenant", sa.text("priority DESC"), "created_at", "id"],
                    sqlite_where=HAS_PENDING_ITEMS, postgresql_where=HAS_PENDING_ITEMS)


def downgrade() -> None:
    op.drop_index(NAME, table_name="jobs")
    op.create_index(NAME, "jobs", ["model", "tenant", "state", sa.text("priority DESC"), "created_at", "id"])
