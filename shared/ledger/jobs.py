"""Jobs: submit, cancel, retry, and the final state once no item is left to run."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

from sqlalchemy import BigInteger, Integer, bindparam, insert, literal, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from shared import webhooks
from shared.errors import Conflict
from shared.ledger import counters, tenant_pending, turns
from shared.ledger.plans import not_found, row_check
from shared.orm import DEFAULT_TENANT, ItemState, Job, JobItem, JobState, TenantTurn, utcnow
from shared.states import OPEN_JOB_STATES, UNFINISHED_JOB_STATES  # noqa: F401  (OPEN_JOB_STATES re-exported)


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


def new_id() -> str:
    """A job's or a lease's id: 32 hex digits of a UUIDv7 (RFC 9562), the time in
    milliseconds then 74 random bits, so that ids made later sort later. Each index that
    starts with an id (the jobs' primary key, a job's items, the items of a lease) then
    takes a new row's entry next to the previous one's, on a leaf already in memory and
    already written since the last checkpoint; a random id (UUIDv4, before) put it on a
    random leaf of a B-tree as large as the history: per index and submit, a page to read
    and one more distinct page for the checkpoint to copy back. (Python 3.14's
    `uuid.uuid7()` makes the same; this runs on 3.11.)"""
    unix_ms = time.time_ns() // 1_000_000 & (1 << 48) - 1
    random_bits = int.from_bytes(os.urandom(10), "big") >> 6  # 74
    rand_a, rand_b = random_bits >> 62, random_bits & (1 << 62) - 1
    return f"{unix_ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b:032x}"


def batch_key(params: dict[str, Any]) -> str:
    """Jobs whose parameters are equal but for the seed (each item has its own) can share
    a micro-batch: they get the same key."""
    shared = {name: value for name, value in params.items() if name != "seed"}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_job(session: Session, **fields: Any) -> Job:
    """`submit_job` (same arguments), answered with the job's ORM row for callers that go
    on to use it (batches, tests)."""
    return session.get(Job, submit_job(session, **fields).id)


@dataclass(frozen=True)
class Submitted:
    """A job `submit_job` inserted, as the submit's reply names it."""

    id: str
    model: str
    state: JobState
    total_items: int


def submit_job(
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
    webhook: dict[str, Any] | None = None,
) -> Submitted:
    """`create_job` for the submit view, the hottest write there is: three INSERTs
    (job, tenant turn, items) built once per process, no ORM object and no flush. Every
    value is made before the first statement, which on SQLite takes the write lock: the
    lock is held for the statements only."""
    job_id = new_id()
    job = {
        "id": job_id, "tenant": tenant, "model": model, "task": task, "state": JobState.QUEUED, "priority": priority,
        "params": params, "batch_key": batch_key(params), "total_items": len(inputs), "pending_items": len(inputs),
        "running_items": 0, "failed_items": 0, "cancelled_items": 0, "attempts": 0,
        "idempotency_key": idempotency_key, "request_hash": request_hash, "created_at": utcnow(),
    }
    if webhook is not None:  # left out, the column is NULL (as the ORM leaves it), not JSON null
        job["webhook"] = webhook
    items = item_rows(job_id, inputs)
    connection = session.connection()  # Core statements: nothing for the ORM to track
    if connection.dialect.name == "postgresql" and len(items) == 1:  # one round trip, not four
        statement = _one_item_statement(tuple(job))
        connection.execute(statement, {**{f"job_{k}": v for k, v in job.items()},
                                       **{f"item_{k}": v for k, v in items[0].items()},
                                       "shard": tenant_pending.random_shard()})
    else:
        connection.execute(_INSERT_JOB, job)
        turns.join_the_queue(connection, model, tenant)
        connection.execute(_INSERT_ITEMS, items)
        tenant_pending.move(connection, {tenant: len(items)})  # last: its row lock is held to the commit
    return Submitted(job_id, model, JobState.QUEUED, len(inputs))


_INSERT_JOB = Job.__table__.insert()
_INSERT_ITEMS = JobItem.__table__.insert()


@lru_cache(maxsize=4)
def _one_item_statement(job_columns: tuple[str, ...]):
    """A one-item job on PostgreSQL as one statement: the job, the tenant's turn and its
    pending total are written by data-modifying CTEs of the item's INSERT (its foreign
    key is checked at the statement's end, where the job's row is there)."""
    jobs, items = Job.__table__, JobItem.__table__
    job_values = {name: bindparam(f"job_{name}", type_=jobs.c[name].type) for name in job_columns}
    new_job = insert(jobs).values(job_values).cte("new_job")
    turn = (turns.join_insert("postgresql", job_values["model"], job_values["tenant"])
            .returning(TenantTurn.__table__.c.model).cte("new_turn"))
    item_values = {name: bindparam(f"item_{name}", type_=items.c[name].type)
                   for name in ("job_id", "idx", "prompt", "seed", "state", "attempts")}
    pending = tenant_pending.upsert("postgresql", job_values["tenant"], bindparam("shard", type_=Integer),
                                    literal(1, BigInteger), after=turn).cte("new_pending")
    return insert(items).values(item_values).add_cte(new_job).add_cte(turn).add_cte(pending)


def item_rows(job_id: str, inputs: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """The rows of a new job's items: pending, by index."""
    pending = ItemState.PENDING.value
    return [{"job_id": job_id, "idx": i, "prompt": prompt, "seed": seed, "state": pending, "attempts": 0}
            for i, (prompt, seed) in enumerate(inputs)]


# A job's counters (shared.ledger.counters), to select next to (or instead of) its row.
COUNT_COLUMNS = (Job.total_items, Job.pending_items, Job.running_items, Job.failed_items, Job.cancelled_items)


def counts_of_row(total: int, pending: int, running: int, failed: int, cancelled: int) -> Counts:
    """The Counts of the COUNT_COLUMNS of a job's row."""
    return Counts(total=total, pending=pending, running=running, failed=failed, cancelled=cancelled,
                  succeeded=total - pending - running - failed - cancelled)


def counts_of(job: Job) -> Counts:
    return counts_of_row(job.total_items, job.pending_items, job.running_items, job.failed_items, job.cancelled_items)


def item_counts(session: Session, job_ids: Iterable[str]) -> dict[str, Counts]:
    """Counts per state for each job, read from the jobs' counters. A job that does not
    exist counts nothing."""
    job_ids = list(job_ids)
    if not job_ids:
        return {}
    counts = {job_id: Counts() for job_id in job_ids}
    rows = session.execute(_settle_statements().counts, {"ids": job_ids})
    counts.update((job_id, counts_of_row(*numbers)) for job_id, *numbers in rows)
    return counts


def settle_job(session: Session, job_id: str) -> JobState | None:
    """Give an unfinished job its final state once none of its items is left to run
    (its counters say so).

    Call it after the item results are committed, or in their transaction once their
    counters are moved (which locks the job's row): either way the last worker to
    finish sees every other worker's results.
    """
    return settle_jobs(session, [job_id]).get(job_id)


def settle_jobs(session: Session, job_ids: Iterable[str]) -> dict[str, JobState]:
    """`settle_job` for many jobs in a few statements (a slice may hold 64 one-item
    jobs): one read of the jobs and their counters, one UPDATE per outcome. Returns the
    jobs it settled and their final states."""
    statements = _settle_statements()
    open_jobs = {job.id: job for job in session.scalars(statements.open_jobs, {"ids": list(job_ids)})}
    outcomes: dict[tuple[JobState, str | None], list[str]] = {}
    counted = {job_id: counts_of(job) for job_id, job in open_jobs.items()}
    for job_id, counts in counted.items():
        outcome = _final_state(open_jobs[job_id], counts)
        if outcome is not None:
            outcomes.setdefault(outcome, []).append(job_id)
    settled: dict[str, JobState] = {}
    events = {}
    now = utcnow()
    for (final, error), ids in outcomes.items():
        changed = session.connection().execute(statements.finish, {
            "ids": ids, "final": final, "error": error, "now": now}).scalars().all()
        for job_id in changed:  # what the row now holds, without a flush writing it again
            for name, value in (("state", final), ("error", error), ("finished_at", now)):
                set_committed_value(open_jobs[job_id], name, value)
        settled.update((job_id, final) for job_id in changed)
        events.update((open_jobs[job_id], (final, counted[job_id].as_dict(), error)) for job_id in changed)
    if events:  # the webhook outbox, in this same transaction (shared.webhooks)
        webhooks.record_job_events(session, events)
    return settled


@dataclass(frozen=True)
class _SettleStatements:
    open_jobs: Any
    counts: Any
    finish: Any


@lru_cache(maxsize=1)
def _settle_statements() -> _SettleStatements:
    """Built once per process (every slice settles its jobs); their values are parameters."""
    ids = bindparam("ids", expanding=True)
    jobs = Job.__table__
    unfinished = [state.value for state in UNFINISHED_JOB_STATES]
    return _SettleStatements(
        # the rows as they are now, counters included, even over jobs this session read before
        open_jobs=(select(Job).where(Job.id.in_(ids), row_check(Job.state).in_(UNFINISHED_JOB_STATES))
                   .execution_options(populate_existing=True)),
        counts=select(Job.id, *COUNT_COLUMNS).where(Job.id.in_(ids)),
        finish=(update(jobs).where(jobs.c.id.in_(ids), row_check(jobs.c.state).in_(unfinished))
                .values(state=bindparam("final", type_=jobs.c.state.type), error=bindparam("error"),
                        finished_at=bindparam("now", type_=jobs.c.finished_at.type))
                .returning(jobs.c.id)),
    )


def _final_state(job: Job, counts: Counts) -> tuple[JobState, str | None] | None:
    """The state and error a job ends with, or None while an item is left to run."""
    if counts.pending or counts.running:
        return None
    if job.state == JobState.CANCELLING or (counts.cancelled and not counts.failed):
        return JobState.CANCELLED, None
    if counts.failed:
        return JobState.FAILED, f"{counts.failed} of {counts.total} items failed"
    return JobState.SUCCEEDED, None


# Only these can be left unsettled: a queued job's items are all pending until the claim
# that takes one of them starts the job in the same transaction, and a cancel or a retry
# settles or queues in the transaction that changes the items.
SETTLEABLE_JOB_STATES = (JobState.RUNNING, JobState.CANCELLING)


def unsettled_job_ids(session: Session) -> list[str]:
    """Started jobs that have no item left to run (a crash between commit and settle):
    the running and cancelling jobs through the state index, each with one probe of its
    items' (job_id, state) index, so the search costs the work under way and neither the
    history nor the jobs still queued behind it."""
    left = select(JobItem.index).where(JobItem.job_id == Job.id, JobItem.state.in_((ItemState.PENDING, ItemState.RUNNING)))
    return list(session.scalars(select(Job.id).where(Job.state.in_(SETTLEABLE_JOB_STATES), not_found(left))))


def cancel_job(session: Session, job: Job) -> Job:
    """Cancel a job: pending items at once; running items at their micro-batch boundary."""
    if job.state == JobState.CANCELLED:
        return job
    if job.state.is_terminal():
        raise Conflict(f"job {job.id} already finished ({job.state.value}) and cannot be cancelled", field="id")
    cancel_jobs(session, [job.id])
    session.refresh(job)
    return job


def cancel_jobs(session: Session, job_ids: list[str]) -> None:
    """`cancel_job` for many unfinished jobs (a batch's) in a few statements, whatever
    their number (a finished job has no pending item, and keeps its state)."""
    if not job_ids:
        return
    session.execute(
        update(JobItem)
        .where(JobItem.job_id.in_(job_ids), JobItem.state == ItemState.PENDING)
        .values(state=ItemState.CANCELLED, finished_at=utcnow())
    )
    session.execute(
        update(Job).where(Job.id.in_(job_ids), Job.state.in_(UNFINISHED_JOB_STATES)).values(state=JobState.CANCELLING)
    )
    session.flush()
    counters.recount(session.connection(), job_ids)
    settle_jobs(session, job_ids)


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
    counters.recount(session.connection(), [job.id])
    session.refresh(job)
    return retried
