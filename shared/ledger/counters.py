"""Each job's items counted by state, kept on the job's row: a poll, a listing and a
settle read one row instead of counting items.

The counters change in the transaction that changes the items, and only in this
package (shared.ledger), two ways (`recount` moves the tenants' pending totals,
`tenant_pending`, by what it moved the jobs' pending counters):

- `add`: the hot path (a micro-batch's results) knows what it changed and
  moves the counters by that much: `UPDATE jobs SET running_items = running_items - 3 ...`,
  whose row lock orders concurrent changes of one job;
- `recount`: the rare paths (a slice given back, an expired lease, a cancel, a retry)
  count the job's items again. The job rows are locked first, in a statement of their
  own, so the count (a later statement: it sees everything committed before the lock)
  cannot miss a change that another transaction counted and committed meanwhile.

`succeeded` is not kept: it is `total_items` less the four counters.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Iterable

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from shared.ledger import tenant_pending
from shared.orm import ItemState, Job, JobItem

COUNTED = {ItemState.PENDING: "pending_items", ItemState.RUNNING: "running_items",
           ItemState.FAILED: "failed_items", ItemState.CANCELLED: "cancelled_items"}


def add(connection: Connection, moves: Iterable[tuple[str, ItemState, ItemState]]) -> None:
    """Move items between states in their jobs' counters: `moves` holds (job id, from
    state, to state) once per item. One UPDATE per distinct change, usually one in all (a
    micro-batch of one job, or of many one-item jobs), its jobs in id order. Only moves
    that leave pending alone (a micro-batch's results): a move in or out of pending moves
    a tenant's total too, which the claim and `recount` keep."""
    for (source, target, amount), job_ids in by_change(moves):
        if ItemState.PENDING in (source, target):
            raise ValueError(f"counters.add cannot move items from {source.value} to {target.value}: use recount")
        connection.execute(_move_statement(source, target), {"ids": job_ids, "amount": amount})


def by_change(per_item: Iterable[tuple]) -> list[tuple[tuple, list[str]]]:
    """`per_item` holds (job id, *change) once per item; returns each distinct (*change,
    amount) with its jobs in id order, a statement's worth each, ordered by their first
    job: the groups of UPDATEs that `add` and a claim run."""
    groups: dict[tuple, list[str]] = {}
    for (job_id, *change), amount in Counter(per_item).items():
        groups.setdefault((*change, amount), []).append(job_id)
    return sorted(((change, sorted(job_ids)) for change, job_ids in groups.items()), key=lambda group: group[1][0])


@lru_cache(maxsize=None)
def _move_statement(source: ItemState, target: ItemState):
    jobs = Job.__table__
    amount = bindparam("amount", type_=jobs.c.pending_items.type)
    values = {}
    if source in COUNTED:
        values[COUNTED[source]] = jobs.c[COUNTED[source]] - amount
    if target in COUNTED:
        values[COUNTED[target]] = jobs.c[COUNTED[target]] + amount
    return update(jobs).where(jobs.c.id.in_(bindparam("ids", expanding=True))).values(**values)


def recount(connection: Connection, job_ids: Iterable[str]) -> None:
    """Count the items of `job_ids` again and store the counts (see the module's doc),
    and move their tenants' pending totals by what their pending counters moved."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    lock, store = _recount_statements()
    before = {job_id: (tenant, pending) for job_id, tenant, pending in connection.execute(lock, {"ids": ids})}
    into_pending: Counter[str] = Counter()
    for job_id, pending in connection.execute(store, {"ids": ids}):
        tenant, was = before[job_id]
        into_pending[tenant] += pending - was
    tenant_pending.move(connection, into_pending)


@lru_cache(maxsize=1)
def _recount_statements():
    """The lock (PostgreSQL; SQLite, one writer at a time, reads the rows the same way)
    reads each job's pending counter before the count, which returns it after."""
    jobs = Job.__table__
    ids = bindparam("ids", expanding=True)
    lock = (select(jobs.c.id, jobs.c.tenant, jobs.c.pending_items).where(jobs.c.id.in_(ids))
            .order_by(jobs.c.id).with_for_update())
    counts = {column: (select(func.count()).select_from(JobItem)
                       .where(JobItem.job_id == jobs.c.id, JobItem.state == state).scalar_subquery())
              for state, column in COUNTED.items()}
    return lock, update(jobs).where(jobs.c.id.in_(ids)).values(**counts).returning(jobs.c.id, jobs.c.pending_items)
