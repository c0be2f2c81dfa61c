"""Whose turn it is: one row per (model, tenant) saying when that tenant last got a slice
of that model. The claim serves the tenant that waited longest (one that never got a
slice, first), so a tenant with 10 items waits for at most one more slice of a tenant
with 5,000 — and choosing reads these few rows, never the jobs table's history."""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, aliased

from shared.ledger.plans import found, row_check
from shared.orm import NEVER_CLAIMED, Job, TenantTurn, has_pending_items
from shared.states import OPEN_JOB_STATES

INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}  # INSERT ... ON CONFLICT, per dialect


def _dialect(session: Session | Connection) -> str:
    return session.get_bind().dialect.name if isinstance(session, Session) else session.dialect.name


def join_the_queue(session: Session | Connection, model: str, tenant: str) -> None:
    """At submit: make sure the tenant has a turn for the model (kept if it has one)."""
    session.execute(_join_statement(_dialect(session)), {"model": model, "tenant": tenant})


def take_turn(session: Session | Connection, model: str, tenant: str, now: datetime) -> None:
    session.execute(_take_statement(_dialect(session)), {"model": model, "tenant": tenant, "now": now})


# Built once per process and dialect (their values are parameters): a submit and a claim
# each run one, and building and keying a statement cost more than running it.
@lru_cache(maxsize=None)
def _join_statement(dialect: str):
    return join_insert(dialect, bindparam("model"), bindparam("tenant"))


def join_insert(dialect: str, model, tenant):
    """The INSERT that gives `tenant` a turn at `model` as one never served, and leaves a
    turn it has alone (values or bound parameters; the one-item submit of
    `shared.ledger.jobs` runs it as a CTE)."""
    insert = INSERTS[dialect](TenantTurn.__table__)
    return insert.values(model=model, tenant=tenant, last_claimed_at=NEVER_CLAIMED).on_conflict_do_nothing()


@lru_cache(maxsize=None)
def _take_statement(dialect: str):
    now = bindparam("now", type_=TenantTurn.last_claimed_at.type)
    table = TenantTurn.__table__
    insert = INSERTS[dialect](table).values(model=bindparam("model"), tenant=bindparam("tenant"), last_claimed_at=now)
    return insert.on_conflict_do_update(index_elements=["model", "tenant"], set_={"last_claimed_at": now})


def claimable(model, tenant=None):
    """Jobs of a model (and tenant, if given) that a claim may take: an item is left to
    claim (what the claim-order index holds) and the job is open. A committed job with a
    pending item is always open; the state is checked row by row all the same, never
    read by."""
    condition = (Job.model == model) & has_pending_items() & row_check(Job.state).in_(OPEN_JOB_STATES)
    return condition if tenant is None else condition & (Job.tenant == tenant)


def has_open_work():
    """The turn's tenant has an open job of the turn's model with a pending item: per
    turn, one probe of the claim-order index that stops at the first such job."""
    return found(select(Job.id).where(claimable(TenantTurn.model, TenantTurn.tenant)))


# Whose turn comes first: the tenant served least recently (one never served, first:
# NEVER_CLAIMED). The order of ix_tenant_turns_order.
TURN_ORDER = (TenantTurn.last_claimed_at, TenantTurn.tenant)


def tenants_in_turn_order(model: str):
    """The tenants with claimable work of `model`, the next to be served first."""
    return select(TenantTurn.tenant).where(TenantTurn.model == model, has_open_work()).order_by(*TURN_ORDER)


def tenants_waiting(session: Session, model: str) -> list[str]:
    """`tenants_in_turn_order` of `model`, read (a status poll does)."""
    return list(session.scalars(_tenants_statement(), {"model": model}))


@lru_cache(maxsize=1)
def _tenants_statement():
    return tenants_in_turn_order(bindparam("model"))


def next_tenant(session: Session, model: str) -> str | None:
    """The tenant with claimable work of `model` that was served least recently."""
    return session.scalar(_next_tenant_statement(), {"model": model})


@lru_cache(maxsize=1)
def _next_tenant_statement():
    """Run twice by every claim (the next slice's tenant, then whether work is left)."""
    return tenants_in_turn_order(bindparam("model")).limit(1)


def models_with_open_work():
    """The models with claimable work (the reconciler's pass): per model that has turns,
    its turns until one has work, each one probe of the claim-order index
    by model and tenant, as a claim's. Probed by model alone, PostgreSQL's planner (the
    table's statistics lagging a burst of submits) read every claimable job of the
    model into a bitmap before it returned the first: 9.5 ms with 100,000 queued one-item
    jobs, 0.1 ms this way (bench/flat.py --small-open 10000 --scale 10). The cost grows
    with the model's tenants that have no work before one that has, never with the work."""
    models = select(TenantTurn.model).distinct().subquery()
    turn = aliased(TenantTurn)
    has_work = found(select(Job.id).where(claimable(turn.model, turn.tenant)))
    return select(models.c.model).where(found(select(turn.tenant).where(turn.model == models.c.model, has_work)))
