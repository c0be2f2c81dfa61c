"""The ORM of the OpenAI-compatible Files and Batches API (tables of migration 0006).

A batch is genq jobs underneath: `OpenAIBatchJob` names them, and `OpenAIBatchRequest`
maps each input line (its `custom_id`) to the `n` consecutive items of one job that
answer it. A file's content is kept in storage as parts (`shared.openai_files`); the row
holds what the API shows of it. Only `shared.openai_batches` changes a batch's `status`.
"""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.orm import Base, utcnow


class BatchStatus(str, enum.Enum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# A batch in one of these still has work, or files to write.
OPEN_BATCH_STATUSES = (BatchStatus.IN_PROGRESS.value, BatchStatus.FINALIZING.value, BatchStatus.CANCELLING.value)


class FilePurpose(str, enum.Enum):
    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"


class OpenAIFile(Base):
    __tablename__ = "openai_files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)
    parts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (
        Index("ix_openai_files_tenant_created", "tenant", "created_at", "id"),
        Index("ix_openai_files_expires", "expires_at"),
    )


class OpenAIBatch(Base):
    __tablename__ = "openai_batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    # Why an unfinished batch stops early: "cancelled" or "expired" (None: it runs to the end).
    stop_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    batch_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    output_expires_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Requests in all; completed and failed ones are exact once the batch is finalized.
    total_requests: Mapped[int] = mapped_column(Integer, default=0)
    completed_requests: Mapped[int] = mapped_column(Integer, default=0)
    failed_requests: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column(nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (
        Index("ix_openai_batches_tenant_created", "tenant", "created_at", "id"),
        Index("ix_openai_batches_status", "status"),
    )


class OpenAIBatchJob(Base):
    """One genq job of a batch: its requests all name one model and ask `n` choices."""

    __tablename__ = "openai_batch_jobs"

    batch_id: Mapped[str] = mapped_column(ForeignKey("openai_batches.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_openai_batch_jobs_job", "job_id"),)


class OpenAIBatchRequest(Base):
    """One input line: items `first_index .. first_index + n - 1` of `job_id` answer it.
    `shaping` keeps what the answer's body needs beyond the items (stop strings, the
    token limit, the prompt tokens counted at validation for usage)."""

    __tablename__ = "openai_batch_requests"

    batch_id: Mapped[str] = mapped_column(ForeignKey("openai_batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(512))
    job_id: Mapped[str] = mapped_column(String(32))
    first_index: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(128))
    shaping: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_openai_batch_requests_job_index", "job_id", "first_index"),)
