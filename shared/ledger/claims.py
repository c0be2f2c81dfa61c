"""Claims: which job's items a worker takes next, under a lease it keeps alive, and
what an expired lease gives back."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from shared.items import ItemInput
from shared.ledger.jobs import OPEN_JOB_STATES, new_id
from shared.orm import ItemState, Job, JobItem, JobState, utcnow


@dataclass(frozen=True)
class ClaimedItem(ItemInput):
    """An item a worker holds under a lease, by its row id."""

    id: int


@dataclass(frozen=True)
class Slice:
    """Items of one job that one worker holds under one lease."""

    lease_id: str
    job_id: str
    model: str
    params: dict[str, Any]
    items: list[ClaimedItem]


def release_expired_leases(session: Session, *, max_attempts: int, now: datetime | None = None) -> int:
    """Running items whose lease expired go back to pending, or fail at the attempt cap."""
    now = now or utcnow()
    expired = and_(JobItem.state == ItemState.RUNNING, JobItem.lease_expires_at < now)
    failed = session.execute(
        update(JobItem)
        .where(expired, JobItem.attempts >= max_attempts)
        .values(
            state=ItemState.FAILED,
            error=f"worker lost: lease expired on each of {max_attempts} attempts",
            lease_id=None,
            lease_expires_at=None,
            finished_at=now,
        )
    ).rowcount
    released = session.execute(
        update(JobItem).where(expired).values(state=ItemState.PENDING, lease_id=None, lease_expires_at=None)
    ).rowcount
    return failed + released


def _has_pending_items(job_id_column) -> Any:
    return exists().where(JobItem.job_id == job_id_column, JobItem.state == ItemState.PENDING)


def next_job_for(session: Session, model: str) -> Job | None:
    """The open job of `model` with pending items that comes first.

    Fair between tenants: the tenant that least recently got a slice of this model goes
    first (one that never did, before all), so a tenant with 10 items waits for at most
    one more slice of a tenant with 5,000. Within a tenant: priority, then age.
    """
    other = aliased(Job)
    tenant_last_served = (
        select(func.max(other.last_claimed_at))
        .where(other.tenant == Job.tenant, other.model == Job.model)
        .correlate(Job)
        .scalar_subquery()
    )
    return session.scalars(
        select(Job)
        .where(Job.model == model, Job.state.in_(OPEN_JOB_STATES), _has_pending_items(Job.id))
        .order_by(tenant_last_served.asc().nulls_first(), Job.priority.desc(), Job.created_at, Job.id)
        .limit(1)
    ).first()


def claim_slice(
    session: Session, *, model: str, owner: str, max_items: int, lease_seconds: float, now: datetime | None = None
) -> Slice | None:
    """Take up to `max_items` pending items of the next job of `model` under a new lease.

    The candidates are locked (PostgreSQL skips rows another claim holds; SQLite has one
    writer at a time) and the UPDATE re-checks `state = pending`, so two workers never
    hold the same item.
    """
    now = now or utcnow()
    job = next_job_for(session, model)
    if job is None:
        return None
    lease_id = new_id()
    candidate_ids = _suspect_item(session, job.id) or session.scalars(
        select(JobItem.id)
        .where(JobItem.job_id == job.id, JobItem.state == ItemState.PENDING)
        .order_by(JobItem.index)
        .limit(max_items)
        .with_for_update(skip_locked=True)
    ).all()
    if not candidate_ids:
        return None
    session.execute(
        update(JobItem)
        .where(JobItem.id.in_(candidate_ids), JobItem.state == ItemState.PENDING)
        .values(
            state=ItemState.RUNNING,
            lease_id=lease_id,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=JobItem.attempts + 1,
            started_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(
        select(JobItem.index, JobItem.prompt, JobItem.seed, JobItem.id)
        .where(JobItem.lease_id == lease_id)
        .order_by(JobItem.index)
    ).all()
    if not rows:
        return None
    session.execute(
        update(Job).where(Job.id == job.id, Job.state == JobState.QUEUED).values(state=JobState.RUNNING, started_at=now)
    )
    session.execute(update(Job).where(Job.id == job.id).values(last_claimed_at=now))
    return Slice(lease_id, job.id, job.model, dict(job.params or {}), [ClaimedItem(*row) for row in rows])


def _suspect_item(session: Session, job_id: str) -> list[int]:
    """A pending item that already spent an attempt was in a slice that died. It runs
    alone, so an item that crashes its process every time fails by itself at the cap
    instead of taking its neighbours' attempts with it."""
    return list(
        session.scalars(
            select(JobItem.id)
            .where(JobItem.job_id == job_id, JobItem.state == ItemState.PENDING, JobItem.attempts > 0)
            .order_by(JobItem.index)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
    )


def extend_lease(session: Session, lease_id: str, lease_seconds: float) -> int:
    """Heartbeat: push the expiry of the items still held under `lease_id`."""
    return session.execute(
        update(JobItem)
        .where(JobItem.lease_id == lease_id, JobItem.state == ItemState.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    ).rowcount


def has_claimable_work(session: Session, model: str) -> bool:
    return next_job_for(session, model) is not None


def models_with_claimable_work(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Job.model).where(Job.state.in_(OPEN_JOB_STATES), _has_pending_items(Job.id)).distinct()
        )
    )
