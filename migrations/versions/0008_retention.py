"""Retention: jobs by finish time (the sweep takes the oldest first) and output_removals,
the removed jobs whose objects are still to be deleted from storage

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_finished", "jobs", ["finished_at"], unique=False)
    op.create_table(
        "output_removals",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_output_removals")),
    )


def downgrade() -> None:
    op.drop_table("output_removals")
    op.drop_index("ix_jobs_finished", table_name="jobs")
