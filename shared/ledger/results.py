"""Results: what a worker holding a lease writes, each write conditional on that lease,
and what it gives back when its slice ends early."""
from __future__ import annotations

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from shared.orm import ItemState, Job, JobItem, JobState, utcnow


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


def release_slice(session: Session, lease_id: str) -> int:
    """Give back what a slice did not reach (time budget spent): pending again, without
    spending an attempt, or cancelled where its job is being cancelled. Returns how many
    items went back to pending."""
    _cancel_held_items_of_cancelling_jobs(session, lease_id)
    return session.execute(
        update(JobItem)
        .where(JobItem.lease_id == lease_id, JobItem.state == ItemState.RUNNING)
        .values(state=ItemState.PENDING, lease_id=None, lease_expires_at=None, attempts=JobItem.attempts - 1)
    ).rowcount


def abandon_slice(session: Session, lease_id: str, *, error: str, max_attempts: int) -> int:
    """A slice broke off with an error: its unfinished items keep the attempt they
    spent; those at the cap fail with the error, the rest go back to pending (or are
    cancelled where their job is being cancelled)."""
    _cancel_held_items_of_cancelling_jobs(session, lease_id)
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


def _cancel_held_items_of_cancelling_jobs(session: Session, lease_id: str) -> int:
    cancelling = select(Job.id).where(Job.state == JobState.CANCELLING)
    return session.execute(
        update(JobItem)
        .where(JobItem.lease_id == lease_id, JobItem.state == ItemState.RUNNING, JobItem.job_id.in_(cancelling))
        .values(state=ItemState.CANCELLED, lease_id=None, lease_expires_at=None, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount


def indices_without_output(session: Session, job_id: str) -> list[int]:
    return list(session.scalars(select(JobItem.index).where(JobItem.job_id == job_id, JobItem.state != ItemState.SUCCEEDED)))


def cancelling_jobs(session: Session, job_ids: list[str]) -> set[str]:
    """Which of `job_ids` are being (or have been) cancelled."""
    stopped = (JobState.CANCELLING, JobState.CANCELLED)
    return set(session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.state.in_(stopped))))
