"""Whose turn it is: one row per (model, tenant) saying when that tenant last got a slice
of that model. The claim serves the tenant that waited longest (one that never got a
slice, first), so a tenant with 10 items waits for at most one more slice of a tenant
with 5,000 — and choosing reads these few rows, never the jobs table's history."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.ledger.plans import found
from shared.orm import ItemState, Job, JobItem, TenantTurn
from shared.states import OPEN_JOB_STATES

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def _insert(session: Session):
    return _INSERTS[session.get_bind().dialect.name](TenantTurn)


def join_the_queue(session: Session, model: str, tenant: str) -> None:
    """At submit: make sure the tenant has a turn for the model (kept if it has one)."""
    session.execute(_insert(session).values(model=model, tenant=tenant).on_conflict_do_nothing())


def take_turn(session: Session, model: str, tenant: str, now: datetime) -> None:
    insert = _insert(session).values(model=model, tenant=tenant, last_claimed_at=now)
    session.execute(insert.on_conflict_do_update(index_elements=["model", "tenant"], set_={"last_claimed_at": now}))


def has_pending_items(job_id_column):
    """The job has a pending item: one probe of the items' (job_id, state) index."""
    return found(select(JobItem.index).where(JobItem.job_id == job_id_column, JobItem.state == ItemState.PENDING))


def claimable(model, tenant, state):
    """Jobs of a model and tenant in one open state with a pending item. One state at a
    time: an equality on `state` is always an index condition, where PostgreSQL without
    statistics applied `state IN (...)` as a filter over the tenant's whole history."""
    return (Job.model == model) & (Job.tenant == tenant) & (Job.state == state) & has_pending_items(Job.id)


def has_open_work():
    """The turn's tenant has an open job of the turn's model with a pending item: per
    turn, a probe per open state that stops at the first such job."""
    return or_(*(found(select(Job.id).where(claimable(TenantTurn.model, TenantTurn.tenant, state)))
                 for state in OPEN_JOB_STATES))


# Whose turn comes first: the tenant served least recently (one never served, first).
TURN_ORDER = (TenantTurn.last_claimed_at.asc().nulls_first(), TenantTurn.tenant)


def tenants_in_turn_order(model: str):
    """The tenants with claimable work of `model`, the next to be served first."""
    return select(TenantTurn.tenant).where(TenantTurn.model == model, has_open_work()).order_by(*TURN_ORDER)


def next_tenant(session: Session, model: str) -> str | None:
    """The tenant with claimable work of `model` that was served least recently."""
    return session.scalar(tenants_in_turn_order(model).limit(1))
