"""Every state change of jobs and items happens here, and nowhere else.

    job:  queued -> running -> succeeded | failed | cancelled
                    running -> cancelling -> cancelled
    item: pending -> running -> succeeded | failed | cancelled
                     running -> pending   (slice released, or lease expired)

A job whose items partly failed ends `failed`; its finished items stay downloadable
and its failed items can be retried alone.

Writes by a worker are conditional on the lease it holds (`lease_id`): a worker whose
lease expired and whose items were claimed again cannot write a second result.
Functions take a session and do not commit: the caller decides the transaction.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from shared.errors import Conflict
from shared.orm import DEFAULT_TENANT, ItemState, Job, JobItem, JobState, utcnow

OPEN_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
UNFINISHED_JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)


@dataclass(frozen=True)
class Counts:
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def progress(self) -> float:
        return self.finished / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("total", "pending", "running", "succeeded", "failed", "cancelled")}


@dataclass(frozen=True)
class ClaimedItem:
    id: int
    index: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class Slice:
    """Items of one job that one worker holds under one lease."""

    lease_id: str
    job_id: str
    model: str
    params: dict[str, Any]
    items: list[ClaimedItem]


def new_id() -> str:
    return uuid.uuid4().hex


# --- submit -------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    model: str,
    task: str,
    params: dict[str, Any],
    inputs: Sequence[tuple[str, int]],
    priority: int = 5,
    tenant: str = DEFAULT_TENANT,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> Job:
    """Insert a queued job and all its pending items (one bulk insert)."""
    job = Job(
        id=new_id(),
        tenant=tenant,
        model=model,
        task=task,
        state=JobState.QUEUED,
        priority=priority,
        params=params,
        total_items=len(inputs),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    session.execute(
        JobItem.__table__.insert(),
        [
            {"job_id": job.id, "idx": i, "prompt": prompt, "seed": seed, "state": ItemState.PENDING.value, "attempts": 0}
            for i, (prompt, seed) in enumerate(inputs)
        ],
    )
    return job


# --- claiming -----------------------------------------------------------------------


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
        select(JobItem.id, JobItem.index, JobItem.prompt, JobItem.seed)
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


# --- results ------------------------------------------------------------------------


def _held(lease_id: str, item_id: int):
    return and_(JobItem.id == item_id, JobItem.lease_id == lease_id, JobItem.state == ItemState.RUNNING)


def record_item_success(
    session: Session, lease_id: str, item_id: int, *, text: str | None = None, key: str | None = None, run_seconds: float | None = None
) -> bool:
    """Store an item's result; False when the lease was lost (the result is dropped)."""
    return bool(
        session.execute(
            update(JobItem)
            .where(_held(lease_id, item_id))
            .values(
                state=ItemState.SUCCEEDED,
                output_text=text,
                output_key=key,
                error=None,
                lease_id=None,
                lease_expires_at=None,
                finished_at=utcnow(),
                run_seconds=run_seconds,
            )
        ).rowcount
    )


def record_item_failure(session: Session, lease_id: str, item_id: int, error: str) -> bool:
    return bool(
        session.execute(
            update(JobItem)
            .where(_held(lease_id, item_id))
            .values(state=ItemState.FAILED, error=error, lease_id=None, lease_expires_at=None, finished_at=utcnow())
        ).rowcount
    )


def release_slice(session: Session, lease_id: str, job_id: str) -> int:
    """Give back what a slice did not reach (time budget spent): pending again, without
    spending an attempt, or cancelled if the job is being cancelled. Returns how many
    items went back to pending."""
    if _cancel_held_items_if_cancelling(session, lease_id, job_id):
        return 0
    return session.execute(
        update(JobItem)
        .where(JobItem.lease_id == lease_id, JobItem.state == ItemState.RUNNING)
        .values(state=ItemState.PENDING, lease_id=None, lease_expires_at=None, attempts=JobItem.attempts - 1)
    ).rowcount


def abandon_slice(session: Session, lease_id: str, job_id: str, *, error: str, max_attempts: int) -> int:
    """A slice broke off with an error: its unfinished items keep the attempt they
    spent; those at the cap fail with the error, the rest go back to pending."""
    if _cancel_held_items_if_cancelling(session, lease_id, job_id):
        return 0
    held = and_(JobItem.lease_id == lease_id, JobItem.state == ItemState.RUNNING)
    session.execute(
        update(JobItem)
        .where(held, JobItem.attempts >= max_attempts)
        .values(state=ItemState.FAILED, error=f"{error} (attempt {max_attempts} of {max_attempts})",
                lease_id=None, lease_expires_at=None, finished_at=utcnow())
    )
    return session.execute(
        update(JobItem).where(held).values(state=ItemState.PENDING, error=error, lease_id=None, lease_expires_at=None)
    ).rowcount


def fail_held_items(session: Session, lease_id: str, error: str) -> int:
    """Fail every unfinished item of a slice (its time limit passed)."""
    return session.execute(
        update(JobItem)
        .where(JobItem.lease_id == lease_id, JobItem.state == ItemState.RUNNING)
        .values(state=ItemState.FAILED, error=error, lease_id=None, lease_expires_at=None, finished_at=utcnow())
    ).rowcount


def _cancel_held_items_if_cancelling(session: Session, lease_id: str, job_id: str) -> bool:
    if session.scalar(select(Job.state).where(Job.id == job_id)) != JobState.CANCELLING:
        return False
    session.execute(
        update(JobItem)
        .where(JobItem.lease_id == lease_id, JobItem.state == ItemState.RUNNING)
        .values(state=ItemState.CANCELLED, lease_id=None, lease_expires_at=None, finished_at=utcnow())
    )
    return True


# --- job outcome --------------------------------------------------------------------


def item_counts(session: Session, job_ids: Iterable[str]) -> dict[str, Counts]:
    """Counts per state for each job, from one grouped query."""
    job_ids = list(job_ids)
    tallies: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if not job_ids:
        return {}
    rows = session.execute(
        select(JobItem.job_id, JobItem.state, func.count())
        .where(JobItem.job_id.in_(job_ids))
        .group_by(JobItem.job_id, JobItem.state)
    )
    for job_id, state, count in rows:
        tallies[job_id][ItemState(state).value] = count
    return {job_id: Counts(total=sum(t.values()), **t) for job_id, t in tallies.items()}


def settle_job(session: Session, job_id: str) -> JobState | None:
    """Give an unfinished job its final state once none of its items is left to run.

    Call it in a transaction of its own after the item results are committed, so the
    last worker to commit always sees every other worker's results.
    """
    job = session.get(Job, job_id)
    if job is None or job.state.is_terminal():
        return None
    counts = item_counts(session, [job_id])[job_id]
    if counts.pending or counts.running:
        return None
    if job.state == JobState.CANCELLING or (counts.cancelled and not counts.failed):
        final, error = JobState.CANCELLED, None
    elif counts.failed:
        final, error = JobState.FAILED, f"{counts.failed} of {counts.total} items failed"
    else:
        final, error = JobState.SUCCEEDED, None
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(UNFINISHED_JOB_STATES))
        .values(state=final, error=error, finished_at=utcnow())
    ).rowcount
    return final if changed else None


def unsettled_job_ids(session: Session) -> list[str]:
    """Unfinished jobs that have no item left to run (a crash between commit and settle)."""
    left = exists().where(JobItem.job_id == Job.id, JobItem.state.in_((ItemState.PENDING, ItemState.RUNNING)))
    return list(session.scalars(select(Job.id).where(Job.state.in_(UNFINISHED_JOB_STATES), ~left)))


def cancel_job(session: Session, job: Job) -> Job:
    """Cancel a job: pending items at once; running items at their micro-batch boundary."""
    if job.state == JobState.CANCELLED:
        return job
    if job.state.is_terminal():
        raise Conflict(f"job {job.id} already finished ({job.state.value}) and cannot be cancelled", field="id")
    now = utcnow()
    session.execute(
        update(JobItem)
        .where(JobItem.job_id == job.id, JobItem.state == ItemState.PENDING)
        .values(state=ItemState.CANCELLED, finished_at=now)
    )
    session.execute(
        update(Job).where(Job.id == job.id, Job.state.in_(UNFINISHED_JOB_STATES)).values(state=JobState.CANCELLING)
    )
    session.flush()
    settle_job(session, job.id)
    session.refresh(job)
    return job


def retry_job(session: Session, job: Job) -> int:
    """Put a finished job's failed items back to pending (with fresh attempts); the job
    is queued again. Returns how many items will run again."""
    if not job.state.is_terminal():
        raise Conflict(f"job {job.id} is {job.state.value}; only a finished job can be retried", field="id")
    retried = session.execute(
        update(JobItem)
        .where(JobItem.job_id == job.id, JobItem.state == ItemState.FAILED)
        .values(state=ItemState.PENDING, error=None, attempts=0, finished_at=None, started_at=None)
    ).rowcount
    if not retried:
        raise Conflict(f"job {job.id} has no failed items to retry", field="id")
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(state=JobState.QUEUED, error=None, finished_at=None, attempts=Job.attempts + 1)
    )
    session.refresh(job)
    return retried


def pending_items_of_tenant(session: Session, tenant: str) -> int:
    return session.scalar(
        select(func.count(JobItem.id)).join(Job, Job.id == JobItem.job_id).where(Job.tenant == tenant, JobItem.state == ItemState.PENDING)
    ) or 0


def indices_without_output(session: Session, job_id: str) -> list[int]:
    return list(session.scalars(select(JobItem.index).where(JobItem.job_id == job_id, JobItem.state != ItemState.SUCCEEDED)))


def is_cancelling(session: Session, job_id: str) -> bool:
    return session.scalar(select(Job.state).where(Job.id == job_id)) in (JobState.CANCELLING, JobState.CANCELLED)
