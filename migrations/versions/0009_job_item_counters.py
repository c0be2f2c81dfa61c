"""jobs.pending_items, running_items, failed_items, cancelled_items: each job's items by
state, kept by the ledger in the transaction that changes them (a poll, a listing and a
settle read one row instead of counting items); counted once here for existing jobs

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

COUNTERS = {"pending_items": "pending", "running_items": "running", "failed_items": "failed",
            "cancelled_items": "cancelled"}


def upgrade() -> None:
    for column in COUNTERS:
        op.add_column("jobs", sa.Column(column, sa.Integer(), server_default="0", nullable=False))
    counts = ", ".join(f"{column} = (SELECT count(*) FROM job_items WHERE job_items.job_id = jobs.id "
                       f"AND job_items.state = '{state}')" for column, state in COUNTERS.items())
    op.execute(f"UPDATE jobs SET {counts}")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in COUNTERS:
            batch_op.drop_column(column)
