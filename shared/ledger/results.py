"""Results: what a worker holding a lease writes, each write conditional on that lease,
and what it gives back when its slice ends early."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.orm import Session

from shared.ledger import counters
from shared.ledger.plans import row_check
from shared.orm import ItemState, Job, JobItem, JobState, utcnow


@dataclass(frozen=True)
class ResultRow:
    """One item's outcome as a worker stores it: text or an output key, or an error."""

    item_id: int
    text: str | None = None
    key: str | None = None
    error: str | None = None
    job_id: str | None = None  # the item's job (looked up when not given)


def record_results(session: Session, lease_id: str, rows: list[ResultRow]) -> tuple[int, int]:
    """Store a micro-batch's outcomes, each conditional on the lease, as two executemany
    UPDATEs (successes, failures), and move them in their jobs' counters. Returns how
    many of each were stored; a row whose lease was lost is dropped (its jobs are then
    counted again: which rows were dropped is not known)."""
    held = {"lease": lease_id, "now": utcnow()}
    successes = [{"item": row.item_id, "text": row.text, "key": row.key, **held} for row in rows if row.error is None]
    failures = [{"item": row.item_id, "message": row.error, **held} for row in rows if row.error is not None]
    stored_successes = stored_failures = 0
    connection = session.connection()  # Core statements, built once (_result_statements)
    store_success, store_failure = _result_statements()
    if successes:
        stored_successes = connection.execute(store_success, successes).rowcount
    if failures:
        stored_failures = connection.execute(store_failure, failures).rowcount
    _count_results(session, rows, stored_successes + stored_failures)
    return stored_successes, stored_failures


def _count_results(session: Session, rows: list[ResultRow], stored: int) -> None:
    job_of = {row.item_id: row.job_id for row in rows}
    unknown = [item_id for item_id, job_id in job_of.items() if job_id is None]
    if unknown:
        job_of.update(session.execute(select(JobItem.id, JobItem.job_id).where(JobItem.id.in_(unknown))).tuples().all())
    if stored == len(rows):
        counters.add(session.connection(), ((job_of[row.item_id], ItemState.RUNNING,
                                             ItemState.SUCCEEDED if row.error is None else ItemState.FAILED)
                                            for row in rows))
    elif stored:
        counters.recount(session.connection(), job_of.values())


@lru_cache(maxsize=1)
def _result_statements():
    """(store a success, store a failure): UPDATEs by item id, each conditional on the lease."""
    items = JobItem.__table__
    held = and_(items.c.id == bindparam("item"), items.c.lease_id == bindparam("lease"),
                row_check(items.c.state) == ItemState.RUNNING.value)
    done = {"lease_id": None, "lease_expires_at": None, "finished_at": bindparam("now", type_=items.c.finished_at.type)}
    success = update(items).where(held).values(state=ItemState.SUCCEEDED.value, output_text=bindparam("text"),
                                               output_key=bindparam("key"), error=None, **done)
    failure = update(items).where(held).values(state=ItemState.FAILED.value, error=bindparam("message"), **done)
    return success, failure


def record_item_success(session: Session, lease_id: str, item_id: int, *, text: str | None = None,
                        key: str | None = None) -> bool:
    """One item's result (see `record_results`); False when the lease was lost."""
    return record_results(session, lease_id, [ResultRow(item_id, text=text, key=key)]) == (1, 0)


def record_item_failure(session: Session, lease_id: str, item_id: int, error: str) -> bool:
    """One item's failure (see `record_results`); False when the lease was lost."""
    return record_results(session, lease_id, [ResultRow(item_id, error=error)]) == (0, 1)


def release_slice(session: Session, lease_id: str) -> int:
    """Give back what a slice did not reach (time budget spent): pending again, without
    spending an attempt, or cancelled where its job is being cancelled. Returns how many
    items went back to pending."""
    held = and_(JobItem.lease_id == lease_id, row_check(JobItem.state) == ItemState.RUNNING)
    cancelled = cancel_items_of_cancelling_jobs(session, held)
    given_back = session.execute(
        update(JobItem)
        .where(held)
        .values(state=ItemState.PENDING, lease_id=None, lease_expires_at=None, attempts=JobItem.attempts - 1)
        .returning(JobItem.job_id)
    ).scalars().all()
    counters.recount(session.connection(), cancelled + given_back)
    return len(given_back)


def abandon_slice(session: Session, lease_id: str, *, error: str, max_attempts: int) -> int:
    """A slice broke off with an error: its unfinished items keep the attempt they
    spent; those at the cap fail with the error, the rest go back to pending (or are
    cancelled where their job is being cancelled)."""
    held = and_(JobItem.lease_id == lease_id, row_check(JobItem.state) == ItemState.RUNNING)
    cancelled = cancel_items_of_cancelling_jobs(session, held)
    failed = session.execute(
        update(JobItem)
        .where(held, JobItem.attempts >= max_attempts)
        .values(state=ItemState.FAILED, error=f"{error} (attempt {max_attempts} of {max_attempts})",
                lease_id=None, lease_expires_at=None, finished_at=utcnow())
        .returning(JobItem.job_id)
    ).scalars().all()
    given_back = session.execute(
        update(JobItem).where(held).values(state=ItemState.PENDING, error=error, lease_id=None, lease_expires_at=None)
        .returning(JobItem.job_id)
    ).scalars().all()
    counters.recount(session.connection(), cancelled + failed + given_back)
    return len(given_back)


def fail_held_items(session: Session, lease_id: str, error: str) -> int:
    """Fail every unfinished item of a slice (its time limit passed)."""
    failed = session.execute(
        update(JobItem)
        .where(JobItem.lease_id == lease_id, row_check(JobItem.state) == ItemState.RUNNING)
        .values(state=ItemState.FAILED, error=error, lease_id=None, lease_expires_at=None, finished_at=utcnow())
        .returning(JobItem.job_id)
    ).scalars().all()
    counters.recount(session.connection(), failed)
    return len(failed)


def cancel_items_of_cancelling_jobs(session: Session, held, now: datetime | None = None) -> list[str]:
    """Held items (`held`, a condition on them) whose job is being cancelled are cancelled
    where a slice or a lease ends, never given back: no claim takes a cancelling job's
    items, so a pending one would keep its job cancelling for good. Returns the job of
    each item cancelled (the caller counts them again)."""
    cancelling = select(Job.id).where(Job.state == JobState.CANCELLING)
    return session.execute(
        update(JobItem)
        .where(held, JobItem.job_id.in_(cancelling))
        .values(state=ItemState.CANCELLED, lease_id=None, lease_expires_at=None, finished_at=now or utcnow())
        .returning(JobItem.job_id)
        .execution_options(synchronize_session=False)
    ).scalars().all()


def indices_without_output(session: Session, job_ids: list[str]) -> list[tuple[str, int]]:
    """(job id, index) of the items of `job_ids` that did not succeed."""
    if not job_ids:
        return []
    return [(job_id, index) for job_id, index in session.execute(
        select(JobItem.job_id, JobItem.index).where(JobItem.job_id.in_(job_ids), JobItem.state != ItemState.SUCCEEDED))]


def cancelling_jobs(session: Session, job_ids: list[str]) -> set[str]:
    """Which of `job_ids` are being (or have been) cancelled."""
    stopped = (JobState.CANCELLING, JobState.CANCELLED)
    return set(session.scalars(select(Job.id).where(Job.id.in_(job_ids), row_check(Job.state).in_(stopped))))
