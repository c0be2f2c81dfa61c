"""How bench/flat.py grows the ledger: tenants with API keys, queued one-item jobs, and
finished history, written in bulk (multi-row INSERTs in chunks, one transaction a chunk)
with the very rows `shared.ledger.create_job` and a worker would leave behind: the same
columns, batch key, tenant turns and pending totals. Bulk, because 10,000 submits or 1,000,000 item
results over HTTP would measure the loader, not the ledger.
"""
from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any, Iterator

from shared.db import session_scope
from shared.keys import create_api_key
from shared.ledger import batch_key, new_id, tenant_pending
from shared.ledger.turns import join_the_queue
from shared.orm import Job, JobItem, utcnow

JOB_CHUNK = 2_000
ITEM_CHUNK = 20_000


def tenant_names(count: int) -> list[str]:
    return [f"t{n:02d}" for n in range(count)]


def make_keys(url: str, tenants: list[str]) -> dict[str, str]:
    """One API key per tenant, and an admin key under "admin"."""
    keys = {}
    with session_scope(url) as session:
        for tenant in tenants:
            keys[tenant] = create_api_key(session, tenant)[1]
        keys["admin"] = create_api_key(session, "ops", admin=True)[1]
    return keys


def template_params(url: str, job_id: str) -> dict[str, Any]:
    """The effective parameters the web stored for a job (the bulk jobs copy them)."""
    with session_scope(url) as session:
        return dict(session.get(Job, job_id).params)


def _job_row(tenant: str, model: str, params: dict, created: datetime, items: int, **extra) -> dict:
    return {"id": new_id(), "tenant": tenant, "model": model, "task": "text-generation", "state": "queued",
            "priority": 5, "params": params, "batch_key": batch_key(params), "total_items": items,
            "pending_items": items, "attempts": 0, "created_at": created, **extra}


def _chunks(rows: list[dict], size: int) -> Iterator[list[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _insert(url: str, jobs: list[dict], items: list[dict]) -> None:
    for chunk in _chunks(jobs, JOB_CHUNK):
        with session_scope(url) as session:
            session.execute(Job.__table__.insert(), chunk)
    for chunk in _chunks(items, ITEM_CHUNK):
        with session_scope(url) as session:
            session.execute(JobItem.__table__.insert(), chunk)


def add_queued_jobs(url: str, model: str, params: dict, tenants: list[str], count: int, start: int = 0,
                    items: int = 1) -> list[str]:
    """`count` queued jobs of `items` pending items each, round-robin over `tenants` (job
    `start + n` goes to tenant `(start + n) % len(tenants)`), created now."""
    now = utcnow()
    jobs = [_job_row(tenants[(start + n) % len(tenants)], model, params, now + timedelta(microseconds=n), items)
            for n in range(count)]
    rows = [{"job_id": job["id"], "idx": index, "prompt": "p", "seed": n * items + index, "state": "pending",
             "attempts": 0} for n, job in enumerate(jobs) for index in range(items)]
    with session_scope(url) as session:
        for tenant in sorted({job["tenant"] for job in jobs}):
            join_the_queue(session, model, tenant)
        tenant_pending.move(session.connection(), {tenant: jobs_of * items for tenant, jobs_of in
                                                   Counter(job["tenant"] for job in jobs).items()})
    _insert(url, jobs, rows)
    return [job["id"] for job in jobs]


def _history_job(rng: random.Random, tenant: str, model: str, params: dict, items: int, newest: datetime,
                 days: float) -> tuple[dict, list[dict]]:
    """One finished job `items` long, created at a random moment in the `days` before
    `newest`: succeeded, or (one in 20) failed with one failed item."""
    created = newest - timedelta(seconds=rng.uniform(0, days * 86400))
    started, failed = created + timedelta(seconds=rng.uniform(0.01, 5)), rng.random() < 0.05
    finished = started + timedelta(seconds=0.01 * items)
    job = _job_row(tenant, model, params, created, items, state="failed" if failed else "succeeded",
                   started_at=started, finished_at=finished, attempts=0, pending_items=0, failed_items=int(failed),
                   error=f"1 of {items} items failed" if failed else None)
    rows = [{"job_id": job["id"], "idx": i, "prompt": "p", "seed": rng.randrange(2**31),
             "state": "failed" if failed and i == 0 else "succeeded", "attempts": 1,
             "output_text": None if failed and i == 0 else f"noop:{i}", "error": "boom" if failed and i == 0 else None,
             "started_at": started, "finished_at": finished, "run_seconds": 0.01} for i in range(items)]
    return job, rows


def add_history(url: str, model: str, params: dict, tenants: list[str], jobs: int, items_per_job: int,
                newest: datetime, days: float = 30, seed: int = 0) -> None:
    """`jobs` finished jobs of `items_per_job` items, round-robin over `tenants`, created
    over the `days` before `newest` (so a listing's first page stays with newer jobs)."""
    rng = random.Random(seed)
    for start in range(0, jobs, JOB_CHUNK):
        job_rows, item_rows = [], []
        for n in range(start, min(jobs, start + JOB_CHUNK)):
            job, rows = _history_job(rng, tenants[n % len(tenants)], model, params, items_per_job, newest, days)
            job_rows.append(job)
            item_rows += rows
        _insert(url, job_rows, item_rows)
    with session_scope(url) as session:
        for tenant in tenants:
            join_the_queue(session, model, tenant)


def add_probe_jobs(url: str, model: str, params: dict, tenant: str, count: int, items_per_job: int) -> list[str]:
    """`count` finished jobs of `tenant`, newer than any history: what the status polls
    and the first page of the tenant's listing read, on the empty ledger and the full one."""
    rng, jobs, items = random.Random(1), [], []
    for _ in range(count):
        job, rows = _history_job(rng, tenant, model, params, items_per_job, utcnow(), days=0.001)
        jobs.append(job)
        items += rows
    _insert(url, jobs, items)
    return [job["id"] for job in jobs]
