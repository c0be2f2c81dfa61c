"""Claims: which job's items a worker takes next, under a lease it keeps alive, and
what an expired lease gives back."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Sequence

from sqlalchemy import Integer, and_, bindparam, case, select, true, union_all, update
from sqlalchemy.orm import Session

from shared.items import ItemInput
from shared.ledger import counters, results, tenant_pending, turns
from shared.ledger.jobs import new_id
from shared.ledger.plans import row_check
from shared.orm import ItemState, Job, JobItem, JobState, is_suspect, utcnow

CLAIM_ORDER = (Job.priority.desc(), Job.created_at, Job.id)


@dataclass(frozen=True)
class ClaimedItem(ItemInput):
    """An item a worker holds under a lease, by its row id and its job."""

    id: int
    job_id: str


@dataclass(frozen=True)
class Slice:
    """Items that one worker holds under one lease: of one model and one tenant, from one
    or more jobs whose parameters are the same but for their seeds (one batch key), so
    they can share micro-batches. `params` are the first job's."""

    lease_id: str
    model: str
    params: dict[str, Any]
    items: list[ClaimedItem]
    more_waiting: bool = False  # whether claimable work of the model was left after this claim
    waited: dict[str, float] = field(default_factory=dict)  # seconds from each job's submission to this claim
    suspect: bool = False  # one item that was in a slice that died (`_suspect_item`): it may kill this one's process

    @property
    def job_ids(self) -> list[str]:
        return list(dict.fromkeys(item.job_id for item in self.items))


def release_expired_leases(session: Session, *, max_attempts: int, now: datetime | None = None) -> int:
    """Running items whose lease expired go back to pending, or fail at the attempt cap,
    or are cancelled where their job is being cancelled.

    Rows another session has locked are skipped (PostgreSQL's SKIP LOCKED; SQLite has
    one writer and nothing to skip): a worker cut off mid-statement can hold its rows
    until its connection is found dead, and the pass (and a claim that runs it) must not
    queue behind it; those rows are taken by a later pass."""
    now = now or utcnow()
    return _release_held(session, JobItem.lease_expires_at < now, max_attempts, now)


def release_leases_of(session: Session, owners: Sequence[str], *, max_attempts: int) -> int:
    """The running items of `owners`, processes known to be dead, as if their leases had
    expired: a worker whose pool process died need not wait out the lease."""
    if not owners:
        return 0
    held_by = and_(JobItem.lease_expires_at.is_not(None), JobItem.lease_owner.in_(list(owners)))  # the expiry index
    return _release_held(session, held_by, max_attempts, utcnow())


def lease_owners(session: Session, prefix: str) -> list[str]:
    """The owners whose names start with `prefix` (a worker's node name and a colon) that
    hold running items: read through the lease-expiry index, which holds running items
    only, so the cost is the work running now, never the queue or the history."""
    held = and_(JobItem.state == ItemState.RUNNING, JobItem.lease_expires_at.is_not(None),
                JobItem.lease_owner.startswith(prefix, autoescape=True))
    return list(session.scalars(select(JobItem.lease_owner).where(held).distinct()))


def _release_held(session: Session, condition, max_attempts: int, now: datetime) -> int:
    """Running items that meet `condition` and whose holder is gone (see the callers)."""
    lost = and_(JobItem.state == ItemState.RUNNING, condition)

    def unlocked(*where):
        return JobItem.id.in_(select(JobItem.id).where(lost, *where).with_for_update(skip_locked=True))

    cancelled = results.cancel_items_of_cancelling_jobs(session, unlocked(), now)
    failed = session.execute(
        update(JobItem)
        .where(unlocked(JobItem.attempts >= max_attempts))
        .values(
            state=ItemState.FAILED,
            error=f"worker lost on each of {max_attempts} attempts (its process died or its lease expired)",
            lease_id=None,
            lease_expires_at=None,
            finished_at=now,
        )
        .returning(JobItem.job_id)
    ).scalars().all()
    released = session.execute(
        update(JobItem).where(unlocked()).values(state=ItemState.PENDING, lease_id=None, lease_expires_at=None)
        .returning(JobItem.job_id)
    ).scalars().all()
    counters.recount(session.connection(), cancelled + failed + released)
    return len(cancelled) + len(failed) + len(released)


def jobs_in_claim_order(model, tenant, limit, *where, columns: Sequence = (), ranges: Sequence = (true(),)):
    """(id, *columns) of the first `limit` open jobs of `model` and `tenant` with pending
    items (and `where`), in claim order: priority, then age, read from the claim-order
    index in order. Each of `ranges`, conditions that are each a range of that index, is
    read on its own and the arms are merged (their OR would be a filter, see
    `queue_position`). The arguments may be values or bound parameters."""
    def arm(range_, *order_columns):
        return (select(Job.id, *order_columns, *columns).where(turns.claimable(model, tenant), range_, *where)
                .order_by(*CLAIM_ORDER).limit(limit))

    if len(ranges) == 1:
        return arm(ranges[0])
    merged = union_all(*(select(arm(range_, Job.priority, Job.created_at).subquery()) for range_ in ranges)).subquery()
    return (select(merged.c.id, *(merged.c[column.key] for column in columns))
            .order_by(merged.c.priority.desc(), merged.c.created_at, merged.c.id).limit(limit))


def claim_slice(
    session: Session, *, model: str, owner: str, max_items: int, lease_seconds: float, now: datetime | None = None
) -> Slice | None:
    """Take up to `max_items` pending items of `model` under a new lease: the next job's,
    then those of the same tenant's next jobs with the same batch key, in claim order.

    The candidates are locked (PostgreSQL skips rows another claim holds; SQLite has one
    writer at a time) and the UPDATE re-checks `state = pending` (row by row: it reads by
    primary key), so two workers never hold the same item.

    Its statements are built once per process (`_statements`): a burst of small jobs
    makes a claim per few items, and building and keying a statement cost more than
    running it.
    """
    now = now or utcnow()
    first = _first_job(session, model)
    if first is None:
        return None
    lease_id = new_id()
    suspect = _suspect_item(session, first.id)
    candidate_ids = suspect or _candidates(session, first, max_items)
    if not candidate_ids:
        return None
    rows = session.connection().execute(_statements().take_items, {
        "ids": candidate_ids, "lease_id": lease_id, "owner": owner,
        "expires": now + timedelta(seconds=lease_seconds), "now": now,
    }).all()
    if not rows:
        return None
    order = {item_id: position for position, item_id in enumerate(candidate_ids)}
    items = sorted((ClaimedItem(*row) for row in rows), key=lambda item: order[item.id])
    waited = _start_jobs(session, items, now)
    turns.take_turn(session, model, first.tenant, now)
    tenant_pending.move(session.connection(), {first.tenant: -len(items)})
    return Slice(lease_id, model, dict(first.params or {}), items, more_waiting=has_claimable_work(session, model),
                 waited=waited, suspect=bool(suspect))


@dataclass(frozen=True)
class _First:
    """The job a claim starts from: what the rest of the claim needs of it."""

    id: str
    model: str
    tenant: str
    batch_key: str
    params: dict[str, Any] | None


def _first_job(session: Session, model: str) -> _First | None:
    """The open job of `model` with pending items that comes first (the tenant that waited
    longest, see `turns`; then within the tenant priority, then age): the few columns a
    claim needs."""
    tenant = turns.next_tenant(session, model)
    if tenant is None:
        return None
    row = session.execute(_statements().first_job, {"model": model, "tenant": tenant}).first()
    return None if row is None else _First(row.id, model, tenant, row.batch_key, row.params)


def _candidates(session: Session, first: _First, max_items: int) -> list[int]:
    """Pending items that spent no attempt yet (see `_suspect_item`): `first`'s by index,
    then, while the slice has room, those of its tenant's next jobs with the same batch
    key, job by job in claim order."""
    statements = _statements()
    taken = list(session.scalars(statements.unspent_items_of_job, {"job_id": first.id, "limit": max_items}))
    room = max_items - len(taken)
    if room <= 0:
        return taken
    job_ids = list(session.scalars(statements.next_jobs_of_batch, {
        "model": first.model, "tenant": first.tenant, "limit": room, "batch_key": first.batch_key, "first": first.id,
    }))
    if not job_ids:
        return taken
    # Reads every item of these jobs and keeps the pending ones: by job, never through the
    # state index (which a planner without statistics prefers, and which holds every
    # pending item of the ledger). They are the jobs right after `first`, nearly all unclaimed.
    rank = {job_id: position for position, job_id in enumerate(job_ids)}
    return taken + list(session.scalars(
        _unspent_items(job_ids, row_check(JobItem.state) == ItemState.PENDING, rank).limit(room)
    ))


def _unspent_items(job_ids, pending, rank: dict[str, int] | None = None):
    """Locked ids of pending items of `job_ids` that spent no attempt, job by job (in
    `rank` order), then by index; rows another claim holds are skipped."""
    order = (case(rank, value=JobItem.job_id),) if rank else ()
    return (
        select(JobItem.id)
        .where(JobItem.job_id.in_(job_ids), pending, JobItem.attempts == 0)
        .order_by(*order, JobItem.index)
        .with_for_update(skip_locked=True)
    )


def _start_jobs(session: Session, items: list[ClaimedItem], now: datetime) -> dict[str, float]:
    """Mark the jobs of the claimed items running and move those items from their
    pending counters to their running ones (one UPDATE per distinct number of items a job
    gave: usually one); returns the seconds each job waited since its submission (for
    /metrics)."""
    connection, waited = session.connection(), {}
    for (amount,), job_ids in counters.by_change((item.job_id,) for item in items):
        rows = connection.execute(_statements().start_jobs, {"ids": job_ids, "now": now, "amount": amount})
        waited.update((job_id, (now - created).total_seconds()) for job_id, created in rows)
    return waited


def _suspect_item(session: Session, job_id: str) -> list[int]:
    """A pending item that already spent an attempt was in a slice that died. It runs
    alone, so an item that crashes its process every time fails by itself at the cap
    instead of taking its neighbours' attempts with it."""
    return list(session.scalars(_statements().suspect_item, {"job_id": job_id}))


@dataclass(frozen=True)
class _Statements:
    first_job: Any
    suspect_item: Any
    unspent_items_of_job: Any
    next_jobs_of_batch: Any
    take_items: Any
    start_jobs: Any


@lru_cache(maxsize=1)
def _statements() -> _Statements:
    """The claim's statements, built once per process; their values are parameters."""
    items, jobs = JobItem.__table__, Job.__table__
    limit, amount = bindparam("limit", type_=Integer), bindparam("amount", type_=Integer)
    now = bindparam("now", type_=items.c.started_at.type)
    queued = jobs.c.state == JobState.QUEUED.value
    return _Statements(
        first_job=jobs_in_claim_order(bindparam("model"), bindparam("tenant"), 1, columns=(Job.batch_key, Job.params)),
        suspect_item=(select(JobItem.id)
                      .where(JobItem.job_id == bindparam("job_id"), is_suspect())
                      .order_by(JobItem.index).limit(1).with_for_update(skip_locked=True)),
        unspent_items_of_job=_unspent_items([bindparam("job_id")], JobItem.state == ItemState.PENDING).limit(limit),
        next_jobs_of_batch=jobs_in_claim_order(bindparam("model"), bindparam("tenant"), limit,
                                               Job.batch_key == bindparam("batch_key"), Job.id != bindparam("first")),
        take_items=(update(items)
                    .where(items.c.id.in_(bindparam("ids", expanding=True)),
                           row_check(items.c.state) == ItemState.PENDING.value)
                    .values(state=ItemState.RUNNING.value, lease_id=bindparam("lease_id"), lease_owner=bindparam("owner"),
                            lease_expires_at=bindparam("expires", type_=items.c.lease_expires_at.type),
                            attempts=items.c.attempts + 1, started_at=now)
                    .returning(items.c.idx, items.c.prompt, items.c.seed, items.c.id, items.c.job_id)),
        start_jobs=(update(jobs).where(jobs.c.id.in_(bindparam("ids", expanding=True)))
                    .values(state=case((queued, JobState.RUNNING.value), else_=jobs.c.state),
                            started_at=case((queued, bindparam("now", type_=jobs.c.started_at.type)),
                                            else_=jobs.c.started_at),
                            pending_items=jobs.c.pending_items - amount, running_items=jobs.c.running_items + amount)
                    .returning(jobs.c.id, jobs.c.created_at)),
    )


def extend_lease(session: Session, lease_id: str, lease_seconds: float) -> int:
    """Heartbeat: push the expiry of the items still held under `lease_id`."""
    return session.execute(
        update(JobItem)
        .where(JobItem.lease_id == lease_id, row_check(JobItem.state) == ItemState.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    ).rowcount


def has_claimable_work(session: Session, model: str) -> bool:
    return turns.next_tenant(session, model) is not None


def models_with_claimable_work(session: Session) -> list[str]:
    return list(session.scalars(turns.models_with_open_work()))
