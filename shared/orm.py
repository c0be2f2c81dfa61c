"""The ORM: jobs and their items (the ledger).

Only `shared.ledger` writes the `state` columns, and a job's item counters with them
(`shared.ledger.counters`): they change in the transaction that changes the items.
"""
from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    and_,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from shared.states import ItemState, JobState  # noqa: F401  (re-exported: the ORM's columns hold them)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda e: [m.value for m in e], native_enum=False, length=16)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


DEFAULT_TENANT = "default"


def partial(condition: str) -> dict[str, Any]:
    """The keywords of an index that holds only the rows where `condition` holds, on
    both backends."""
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


def with_value(column: str) -> dict[str, Any]:
    """The keywords of a partial index that holds only the rows where `column` has a
    value (migration 0011): a column that is NULL for most rows, or for most of a row's
    life (a lease, a finish time, an idempotency key). Such an index holds the rows a
    query can find in it, and a submit writes none of them; a query's `column = ?` or
    `column < ?` implies the condition, so SQLite and PostgreSQL read through it."""
    return partial(f"{column} IS NOT NULL")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    model: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(32))
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.QUEUED)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Jobs of one model with the same batch key may share a slice and a micro-batch.
    batch_key: Mapped[str] = mapped_column(String(64), default="", server_default="")
    total_items: Mapped[int] = mapped_column(Integer)
    # The job's items by state, kept by shared.ledger.counters (succeeded: the rest of total_items).
    pending_items: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    running_items: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed_items: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancelled_items: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # {"url", "events"}: where this job's events are delivered (shared.webhooks); null: the tenant's default.
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)

    items: Mapped[list["JobItem"]] = relationship(back_populates="job", order_by="JobItem.index", lazy="raise")

    __table_args__ = (
        # Listings (all, by state, by tenant, by tenant and state), newest first; the
        # reconciler's unfinished jobs and a tenant's open jobs (the pending quota).
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_state_created", "state", "created_at", "id"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_tenant_state_created", "tenant", "state", "created_at", "id"),
        Index("ix_jobs_tenant_idempotency_key", "tenant", "idempotency_key", unique=True, **with_value("idempotency_key")),
    )


# The claim, once the tenant is chosen: its jobs of one model with an item left to claim,
# in claim order (priority first, then age), read from the index in order, with no sort.
# It holds those jobs only (migration 0012): what is queued, never the history, so probing
# a tenant for work costs the same at any age of the ledger, and a claim that takes a
# one-item job's item deletes its entry instead of moving it.
def has_pending_items():
    """A job with an item left to claim (its counter): the claim-order index's condition
    and the one every query of that index repeats, with a literal 0 — PostgreSQL's
    generic plan of a prepared statement cannot prove that `pending_items > $1` implies
    the index's condition, and reads another index instead."""
    return Job.pending_items > literal_column("0")


Index("ix_jobs_claim_order", Job.model, Job.tenant, Job.priority.desc(), Job.created_at, Job.id,
      sqlite_where=has_pending_items(), postgresql_where=has_pending_items())
# A tenant's event stream resumed after a disconnect: the jobs that finished since (migration 0007).
Index("ix_jobs_tenant_finished", Job.tenant, Job.finished_at, **with_value("finished_at"))
# Retention: the jobs that finished longest ago, oldest first (migration 0008).
Index("ix_jobs_finished", Job.finished_at, **with_value("finished_at"))


class OutputRemoval(Base):
    """A removed job whose outputs may still be in storage: written in the transaction
    that removes the job's rows, deleted once its objects are (shared.retention)."""

    __tablename__ = "output_removals"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# A tenant turn's `last_claimed_at` before its first slice: older than any real one, so
# a tenant never served goes first in a plain index's order. (NULL would need NULLS
# FIRST, which SQLite cannot index and PostgreSQL's plain index does not give.)
NEVER_CLAIMED = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TenantTurn(Base):
    """When each tenant last got a slice of a model: the claim serves the tenant that
    waited longest first. One row per (model, tenant), so choosing a tenant never reads
    the jobs table's history; the index walks the turns in that order, so a claim stops
    at the first tenant with work instead of probing every tenant's jobs."""

    __tablename__ = "tenant_turns"
    __table_args__ = (Index("ix_tenant_turns_order", "model", "last_claimed_at", "tenant"),)

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_claimed_at: Mapped[datetime] = mapped_column(default=NEVER_CLAIMED)


class TenantPending(Base):
    """A tenant's pending items, the sum of its jobs' `pending_items`, kept beside them
    (`shared.ledger.tenant_pending`) so that the pending quota reads a few rows instead
    of every open job. Spread over shards, each a running total a transaction moves by
    what it changed (a shard may go below zero): concurrent submits and claims of one
    tenant each lock one shard, rarely the same."""

    __tablename__ = "tenant_pending_items"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pending_items: Mapped[int] = mapped_column(BigInteger, default=0)


class ApiKey(Base):
    """An API key: only its SHA-256 is stored, and a short prefix that names it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(default=False)
    label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


# A pending item that already spent an attempt was in a slice that died.
SUSPECT = "state = 'pending' AND attempts > 0"


class JobItem(Base):
    __tablename__ = "job_items"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column("idx", Integer)
    state: Mapped[ItemState] = mapped_column(_enum(ItemState, "item_state"), default=ItemState.PENDING)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)
    output_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    run_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)

    job: Mapped[Job] = relationship(back_populates="items", lazy="raise")

    __table_args__ = (
        UniqueConstraint("job_id", "idx", name="uq_job_items_job_id_idx"),
        # Counts per state, and the next pending items of a job in order.
        Index("ix_job_items_job_state_idx", "job_id", "state", "idx"),
        # Pending items that spent an attempt (a claim runs such an item alone: see
        # `is_suspect`); nearly always empty (migration 0013). Keyed like the index above,
        # state included, so that SQLite's planner, finding the two equally good for the
        # claim's search, takes the partial one (keyed (job_id, idx), it took the other).
        Index("ix_job_items_suspect", "job_id", "state", "idx", **partial(SUSPECT)),
        # Held items only: an item has a lease from its claim to its result.
        Index("ix_job_items_lease", "lease_id", **with_value("lease_id")),
        Index("ix_job_items_state_lease_expiry", "state", "lease_expires_at", **with_value("lease_expires_at")),
        # An event stream reads the items finished since its cursor (migration 0007).
        Index("ix_job_items_job_finished", "job_id", "finished_at", **with_value("finished_at")),
    )


# The tables of the OpenAI-compatible Files and Batches API share this metadata (one
# schema for migrations and tests); imported last, as that module builds on `Base`.
from shared import openai_orm  # noqa: E402,F401,I001

# Webhook endpoints, the delivery outbox and its attempts (migration 0007).
from shared import webhook_orm  # noqa: E402,F401


def is_suspect():
    """`SUSPECT` as a query's condition, spelled with the index's literals: both planners
    then read ix_job_items_suspect, which holds such items only, instead of every pending
    item of the job through ix_job_items_job_state_idx (a claim of a job's items read
    the job's whole remaining work: 4,224 rows filtered out, 1.3 ms, in a 6,400-item job
    on PostgreSQL, growing with the job). With parameters (`state = $1`) neither could
    prove the index's condition holds."""
    return and_(JobItem.state == literal_column("'pending'"), JobItem.attempts > literal_column("0"))
