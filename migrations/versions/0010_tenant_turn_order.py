"""tenant_turns.last_claimed_at is never NULL (a tenant never served has 1970-01-01) and
an index walks the turns in claim order: the claim stops at the first tenant with work
instead of probing every tenant's jobs and sorting

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


NEVER_CLAIMED = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _never() -> sa.BindParameter:
    """Bound as each backend stores a datetime (SQLite: text in SQLAlchemy's format)."""
    return sa.bindparam("never", NEVER_CLAIMED, type_=sa.DateTime(timezone=True))


def upgrade() -> None:
    op.get_bind().execute(sa.text("UPDATE tenant_turns SET last_claimed_at = :never WHERE last_claimed_at IS NULL")
                          .bindparams(_never()))
    with op.batch_alter_table("tenant_turns", schema=None) as batch_op:
        batch_op.alter_column("last_claimed_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.create_index("ix_tenant_turns_order", ["model", "last_claimed_at", "tenant"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tenant_turns", schema=None) as batch_op:
        batch_op.drop_index("ix_tenant_turns_order")
        batch_op.alter_column("last_claimed_at", existing_type=sa.DateTime(timezone=True), nullable=True)
    op.get_bind().execute(sa.text("UPDATE tenant_turns SET last_claimed_at = NULL WHERE last_claimed_at = :never")
                          .bindparams(_never()))
