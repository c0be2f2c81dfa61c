"""Where a job stands in its model's queue, by the rule the claim follows (`claims`,
`turns`): the tenants take turns, one slice each, the one served least recently first
(`turns.TURN_ORDER`); within a tenant, jobs go in claim order (`claims.CLAIM_ORDER`:
priority, then age), and a slice takes up to `slice_items` items of one batch key.

So before a job's first item is claimed, its tenant runs the slices of the jobs ahead of
it, and every other tenant with work gets as many turns (one more if its turn comes
before the job's tenant's), each of up to `slice_items` items. The same count through the
job's last pending item says how many items run before the job is done: what an ETA
divides by the model's throughput. Slices are counted as if they were full (jobs of one
batch key share them), so the figures are an estimate of the order, not a promise: a job
submitted later with a higher priority, or by a tenant whose turn comes first, still goes
ahead.

Cost: the job's tenant's jobs ahead of it and, per other tenant, its first jobs in claim
order, read from the claim-order index (no sort), each with its pending items (its counter). At
most `scan_limit` jobs are read in all; past that the figures are lower bounds
(`exact` is false), so a poll costs the same whatever the queue holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from math import ceil

from sqlalchemy import Integer, and_, bindparam, func, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators

from shared.ledger import turns
from shared.ledger.claims import CLAIM_ORDER, jobs_in_claim_order
from shared.ledger.plans import row_check
from shared.orm import ItemState, Job, JobItem, JobState
from shared.states import OPEN_JOB_STATES


@dataclass(frozen=True)
class QueuePlace:
    position: int  # 1: the next job of its model to be claimed
    items_ahead: int  # pending items claimed before the job's first


@dataclass(frozen=True)
class Outlook:
    place: QueuePlace | None  # only for a queued job
    items_before_end: int  # pending items claimed before the job's last, its own included
    exact: bool  # False: the scan stopped at `scan_limit` jobs; the figures are lower bounds
    items_running: int = 0  # of the model, held by workers now: done before any pending item
    reclaimed_at: datetime | None = None  # when the last of the job's items a lost worker holds can be claimed again

    @property
    def items_to_wait_for(self) -> int:
        """The items that finish before the job's last one does: all the model's running
        items and those claimed before its last pending one (just its own running ones
        once it has no pending item left)."""
        return self.items_before_end + self.items_running


@dataclass(frozen=True)
class _Waiting:
    """An open job with pending items, as the queue sees it."""

    pending: int
    batch_key: str


def outlook(session: Session, job: Job, *, pending: int, slice_items: int, scan_limit: int,
            lost_before: datetime | None = None) -> Outlook | None:
    """The outlook of an open job with `pending` pending items (None for another job).
    A running item whose lease expires before `lost_before` is held by a worker that
    stopped renewing it (a live one renews it long before): it runs again only once the
    lease expires, which `reclaimed_at` says."""
    if job.state not in OPEN_JOB_STATES:
        return None
    budget = scan_limit
    own = _claimable(session, job.model, job.tenant, budget, job)
    budget -= len(own)
    exact = len(own) < scan_limit
    first_turn, last_turn = _turns_of(own, job.batch_key, pending, slice_items)
    position, items_ahead = 1 + len(own), sum(waiting.pending for waiting in own)
    items_before_end = items_ahead + pending
    tenants = turns.tenants_waiting(session, job.model)
    mine = tenants.index(job.tenant) if job.tenant in tenants else len(tenants)
    for place, tenant in enumerate(tenants):
        if tenant == job.tenant:
            continue
        earlier = 1 if place < mine else 0  # its turn comes before the job's tenant's
        first_items = max(0, first_turn - 1 + earlier) * slice_items
        last_items = max(0, last_turn - 1 + earlier) * slice_items
        wanted = max(first_items, last_items)
        if wanted == 0:
            continue
        if budget <= 0:
            exact = False
            break
        limit = min(budget, wanted)
        theirs = _claimable(session, job.model, tenant, limit)
        budget -= len(theirs)
        if limit < wanted and len(theirs) == limit and sum(w.pending for w in theirs) < wanted:
            exact = False  # the budget ran out before this tenant's share was read
        jobs_before, items_before = _share(theirs, first_items)
        position += jobs_before
        items_ahead += items_before
        items_before_end += _share(theirs, last_items)[1]
    place = QueuePlace(position, items_ahead) if job.state == JobState.QUEUED else None
    reclaimed_at = _lost_lease_expiry(session, job.id, lost_before) if job.state == JobState.RUNNING else None
    return Outlook(place, items_before_end, exact, _running_items(session, job.model, job.id if not pending else None),
                   reclaimed_at)


def _turns_of(own: list[_Waiting], batch_key: str, pending: int, slice_items: int) -> tuple[int, int]:
    """Which of its tenant's turns claims the job's first pending item, and which its last
    (0: the job has no pending item). A turn's slice takes items of one batch key."""
    by_key: dict[str, int] = {}
    for waiting in own:
        by_key[waiting.batch_key] = by_key.get(waiting.batch_key, 0) + waiting.pending
    same = by_key.pop(batch_key, 0)
    other_turns = sum(ceil(items / slice_items) for items in by_key.values())
    first = other_turns + same // slice_items + 1
    last = other_turns + ceil((same + pending) / slice_items) if pending else 0
    return first, last


def _share(theirs: list[_Waiting], items: int) -> tuple[int, int]:
    """(jobs touched, items taken) when a tenant's first `items` items are claimed."""
    jobs = taken = 0
    for waiting in theirs:
        if taken >= items:
            break
        jobs += 1
        taken += min(waiting.pending, items - taken)
    return jobs, taken


def _ahead_ranges() -> list:
    """The rows before a job in CLAIM_ORDER (its values are the parameters `ahead_<column>`,
    see `_ahead_params`), as one condition per run of ordering columns of one direction
    (equal on the runs before it, strictly before on it, a row comparison for a run of
    several): each is a range of the claim-order index, where one OR of them would be a
    filter over the tenant's every open job. CLAIM_ORDER's runs are (priority) descending,
    then (created_at, id): two ranges, so two arms where one per column made three, and
    planning them cost more than running them."""
    ranges, equal = [], []
    for columns, descending in _order_runs():
        values = [bindparam(f"ahead_{column.key}", type_=column.type) for column in columns]
        left, right = (columns[0], values[0]) if len(columns) == 1 else (tuple_(*columns), tuple_(*values))
        ranges.append(and_(*equal, left > right if descending else left < right))
        equal.extend(column == value for column, value in zip(columns, values))
    return ranges


def _order_runs() -> list[tuple[list, bool]]:
    """CLAIM_ORDER's columns as runs of consecutive columns of one direction: ([column, ...], descending)."""
    runs: list[tuple[list, bool]] = []
    for column, descending in _order_columns():
        if runs and runs[-1][1] == descending:
            runs[-1][0].append(column)
        else:
            runs.append(([column], descending))
    return runs


def _ahead_params(job: Job) -> dict:
    return {f"ahead_{column.key}": getattr(job, column.key) for column, _ in _order_columns()}


def _order_columns() -> list[tuple]:
    """(column, descending) of each term of CLAIM_ORDER."""
    terms = []
    for clause in CLAIM_ORDER:
        descending = getattr(clause, "modifier", None) is operators.desc_op
        terms.append((clause.element if descending else clause, descending))
    return terms


def _claimable(session: Session, model: str, tenant: str, limit: int, job: Job | None = None) -> list[_Waiting]:
    """The first `limit` jobs of `tenant` the claim would take (only those ahead of `job`,
    if given), in claim order."""
    if limit <= 0:
        return []
    params = {"model": model, "tenant": tenant, "limit": limit, **(_ahead_params(job) if job is not None else {})}
    rows = session.execute(_claimable_statement(job is not None), params)
    return [_Waiting(int(row.pending_items or 0), row.batch_key) for row in rows]


@lru_cache(maxsize=2)
def _claimable_statement(ahead: bool):
    """`_claimable`'s statement, built once per process (its values are parameters): the
    claim's own read (`claims.jobs_in_claim_order`), with one arm per range of the jobs
    ahead (`_ahead_ranges`) when it reads only those; each job's pending items are its
    counter."""
    return jobs_in_claim_order(bindparam("model"), bindparam("tenant"), bindparam("limit", type_=Integer),
                               columns=(Job.batch_key, Job.pending_items),
                               **({"ranges": _ahead_ranges()} if ahead else {}))


def _running_items(session: Session, model: str, job_id: str | None = None) -> int:
    """Items of `model` that workers hold now (of `job_id` alone, if given): the running
    jobs' counters, read through the state index (the model is only checked), bounded by
    the work in flight, never by the ledger."""
    if job_id is not None:
        return int(session.scalar(_running_items_statement(True), {"job_id": job_id}) or 0)
    return int(session.scalar(_running_items_statement(False), {"model": model}) or 0)


@lru_cache(maxsize=2)
def _running_items_statement(of_job: bool):
    """`_running_items`' statement, built once per process (a poll runs it)."""
    if of_job:
        return select(Job.running_items).where(Job.id == bindparam("job_id"))
    return select(func.sum(Job.running_items)).where(Job.state == JobState.RUNNING,
                                                     row_check(Job.model) == bindparam("model"))


def _lost_lease_expiry(session: Session, job_id: str, lost_before: datetime | None) -> datetime | None:
    """The latest lease expiry among the job's running items whose lease expires before
    `lost_before` (None: none is, or no `lost_before`): read through the items' (job,
    state) index or their (state, lease expiry) one, the cost is the job's running items
    or the ledger's stale leases, both bounded by the work in flight."""
    if lost_before is None:
        return None
    return session.scalar(_lost_lease_statement(), {"job_id": job_id, "lost_before": lost_before})


@lru_cache(maxsize=1)
def _lost_lease_statement():
    """`_lost_lease_expiry`'s statement, built once per process."""
    expiry = JobItem.lease_expires_at
    return (select(func.max(expiry))
            .where(JobItem.job_id == bindparam("job_id"), JobItem.state == ItemState.RUNNING,
                   expiry < bindparam("lost_before", type_=expiry.type)))
