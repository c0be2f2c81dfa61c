"""OpenAI-compatible files and batches: openai_files, openai_batches, the jobs of each batch, and its requests (custom_id -> job items)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _timestamp(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "openai_files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("expires_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openai_files")),
    )
    op.create_index("ix_openai_files_tenant_created", "openai_files", ["tenant", "created_at", "id"], unique=False)
    op.create_index("ix_openai_files_expires", "openai_files", ["expires_at"], unique=False)

    op.create_table(
        "openai_batches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("input_file_id", sa.String(length=40), nullable=False),
        sa.Column("completion_window", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stop_reason", sa.String(length=16), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("output_file_id", sa.String(length=40), nullable=True),
        sa.Column("error_file_id", sa.String(length=40), nullable=True),
        sa.Column("output_expires_seconds", sa.Integer(), nullable=True),
        sa.Column("total_requests", sa.Integer(), nullable=False),
        sa.Column("completed_requests", sa.Integer(), nullable=False),
        sa.Column("failed_requests", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("in_progress_at"),
        _timestamp("expires_at"),
        _timestamp("finalizing_at"),
        _timestamp("completed_at"),
        _timestamp("failed_at"),
        _timestamp("expired_at"),
        _timestamp("cancelling_at"),
        _timestamp("cancelled_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openai_batches")),
    )
    op.create_index("ix_openai_batches_tenant_created", "openai_batches", ["tenant", "created_at", "id"], unique=False)
    op.create_index("ix_openai_batches_status", "openai_batches", ["status"], unique=False)

    op.create_table(
        "openai_batch_jobs",
        sa.Column("batch_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["openai_batches.id"],
                                name=op.f("fk_openai_batch_jobs_batch_id_openai_batches"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_openai_batch_jobs_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", "job_id", name=op.f("pk_openai_batch_jobs")),
    )
    op.create_index("ix_openai_batch_jobs_job", "openai_batch_jobs", ["job_id"], unique=False)

    op.create_table(
        "openai_batch_requests",
        sa.Column("batch_id", sa.String(length=40), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(length=512), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("first_index", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("shaping", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["openai_batches.id"],
                                name=op.f("fk_openai_batch_requests_batch_id_openai_batches"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", "line", name=op.f("pk_openai_batch_requests")),
    )
    op.create_index("ix_openai_batch_requests_job_index", "openai_batch_requests", ["job_id", "first_index"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_openai_batch_requests_job_index", table_name="openai_batch_requests")
    op.drop_table("openai_batch_requests")
    op.drop_index("ix_openai_batch_jobs_job", table_name="openai_batch_jobs")
    op.drop_table("openai_batch_jobs")
    op.drop_index("ix_openai_batches_status", table_name="openai_batches")
    op.drop_index("ix_openai_batches_tenant_created", table_name="openai_batches")
    op.drop_table("openai_batches")
    op.drop_index("ix_openai_files_expires", table_name="openai_files")
    op.drop_index("ix_openai_files_tenant_created", table_name="openai_files")
    op.drop_table("openai_files")
