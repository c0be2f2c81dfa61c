"""Each tenant's pending items, kept beside its jobs' counters: the pending quota reads a
tenant's few shard rows (`of_tenant`) instead of summing its open jobs, which at every
submit near the cap cost tens of ms for a tenant with 50,000 one-item jobs queued.

Whatever moves a job's `pending_items` moves its tenant's total in the same transaction,
by the same amount (`move`): a submit, a claim, and `counters` (which every other change
of a job's counters goes through). Each move goes to a shard chosen at random, whose row
lock orders concurrent moves of that shard only: submits and claims of one tenant,
concurrent on PostgreSQL, rarely wait for each other. A shard is a running total of
the moves made to it and may be below zero; the sum of a tenant's shards is its pending
items. A transaction locks its tenants' shards last (after any job row), in tenant
order, so that two cannot wait for each other.
"""
from __future__ import annotations

import random
from functools import lru_cache
from typing import Mapping

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection

from shared.ledger.turns import INSERTS
from shared.orm import TenantPending

SHARDS = 16


def move(connection: Connection, changes: Mapping[str, int]) -> None:
    """Add each tenant's change (items, positive into pending, negative out of it) to one
    of its shards."""
    statement = move_statement(connection.dialect.name)
    for tenant in sorted(changes):
        if changes[tenant]:
            connection.execute(statement, {"tenant": tenant, "shard": random_shard(), "items": changes[tenant]})


def random_shard() -> int:
    return random.randrange(SHARDS)


def of_tenant(connection: Connection, tenant: str) -> int:
    """The tenant's pending items: the sum of its shards, read by primary key."""
    return int(connection.scalar(_sum_statement(), {"tenant": tenant}) or 0)


@lru_cache(maxsize=None)
def move_statement(dialect: str):
    """`upsert` with parameters `tenant`, `shard` and `items`, built once per process and
    dialect: every submit and claim runs it."""
    return upsert(dialect, bindparam("tenant"), bindparam("shard"), bindparam("items"))


def upsert(dialect: str, tenant, shard, items, *, after=None):
    """Add `items` to the shard `shard` of `tenant` (values or SQL expressions), the row
    made if it is not there. `after`, a data-modifying CTE with RETURNING, runs to its
    end before the row is written: PostgreSQL runs a statement's CTEs in no set order,
    and a submit must lock the tenant's turn before its shard, as a claim does (a submit
    that held a shard while it waited for a claim's turn deadlocked with it)."""
    table = TenantPending.__table__
    insert = INSERTS[dialect](table)
    if after is None:
        insert = insert.values(tenant=tenant, shard=shard, pending_items=items)
    else:
        after_done = select(func.count()).select_from(after).scalar_subquery() >= 0
        insert = insert.from_select(["tenant", "shard", "pending_items"], select(tenant, shard, items).where(after_done))
    return insert.on_conflict_do_update(index_elements=["tenant", "shard"],
                                        set_={"pending_items": table.c.pending_items + insert.excluded.pending_items})


@lru_cache(maxsize=1)
def _sum_statement():
    table = TenantPending.__table__
    return select(func.sum(table.c.pending_items)).where(table.c.tenant == bindparam("tenant"))
