"""Indexes over a column that is NULL for most rows, or for most of a row's life, hold
only the rows where it has a value: an item's lease (from its claim to its result), a
job's or an item's finish time, a job's idempotency key. Each held a NULL entry for every
row of the ledger that a query of it never reads, and a submit wrote one into each (a
one-item submit wrote 76 KB to SQLite's WAL before, 51 KB after). `column = ?` and
`column < ?` imply the condition, so both backends still read through them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# (table, index, columns, unique, the column that must have a value)
INDEXES = (
    ("job_items", "ix_job_items_lease", ["lease_id"], False, "lease_id"),
    ("job_items", "ix_job_items_state_lease_expiry", ["state", "lease_expires_at"], False, "lease_expires_at"),
    ("job_items", "ix_job_items_job_finished", ["job_id", "finished_at"], False, "finished_at"),
    ("jobs", "ix_jobs_tenant_finished", ["tenant", "finished_at"], False, "finished_at"),
    ("jobs", "ix_jobs_finished", ["finished_at"], False, "finished_at"),
    ("jobs", "ix_jobs_tenant_idempotency_key", ["tenant", "idempotency_key"], True, "idempotency_key"),
)


def _recreate(partial: bool) -> None:
    for table, name, columns, unique, column in INDEXES:
        condition = sa.text(f"{column} IS NOT NULL")
        where = {"sqlite_where": condition, "postgresql_where": condition} if partial else {}
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns, unique=unique, **where)


def upgrade() -> None:
    _recreate(partial=True)


def downgrade() -> None:
    _recreate(partial=False)
