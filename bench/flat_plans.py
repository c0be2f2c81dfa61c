"""The plans of the hot path, for bench/flat.py: run each hot-path operation once in a
transaction that is rolled back, capture every statement it sends (a
`before_cursor_execute` listener), then ask the database how it runs each one
(EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL) with the very parameters it was
sent. A plan that reads a whole table of the ledger is flagged.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import event
from sqlalchemy.orm import Session

from shared.db import get_engine
from shared.keys import Principal
from shared.ledger import claims, jobs, results
from web import queries

LEDGER_TABLES = ("jobs", "job_items")


@contextmanager
def captured(engine) -> Iterator[list[tuple[str, object]]]:
    statements: list[tuple[str, object]] = []

    def listen(_conn, _cursor, statement, parameters, _context, executemany):
        if not executemany and statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE", "INSERT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def _claim(session: Session, model: str) -> None:
    """A worker's slice: expired leases, the claim, a heartbeat, a result, the release
    (which settles the slice's jobs) and the cancel watch."""
    claims.release_expired_leases(session, max_attempts=3)
    claimed = claims.claim_slice(session, model=model, owner="flat-bench", max_items=10, lease_seconds=60)
    if claimed is not None:
        claims.extend_lease(session, claimed.lease_id, 60)
        results.cancelling_jobs(session, claimed.job_ids)
        results.record_results(session, claimed.lease_id, [results.ResultRow(claimed.items[0].id, text="x")])
        results.release_slice(session, claimed.lease_id)
        settled = jobs.settle_jobs(session, claimed.job_ids)
        results.indices_without_output(session, list(settled))


def operations(model: str, tenant: str, job_id: str) -> dict[str, Callable[[Session], object]]:
    """Each hot-path operation, as the web, a worker and the reconciler run it."""
    member, admin = Principal(tenant, False), Principal("ops", True)
    return {
        "claim (worker: claim, heartbeat, result, release, settle)": lambda s: _claim(s, model),
        "submit (web: quota, insert)": lambda s: (queries.pending_items_of_tenant(s, tenant), jobs.create_job(
            s, model=model, task="text-generation", params={}, inputs=[("p", 1)], tenant=tenant)),
        "status poll (web)": lambda s: queries.find_job_with_counts(s, member, job_id),
        "listing limit=100, tenant key (web)": lambda s: _listing(s, member),
        "listing limit=100, admin key (web)": lambda s: _listing(s, admin),
        "reconciler: expired leases": lambda s: claims.release_expired_leases(s, max_attempts=3),
        "reconciler: unsettled jobs": lambda s: jobs.settle_jobs(s, jobs.unsettled_job_ids(s)),
        "reconciler: models with claimable work": lambda s: claims.models_with_claimable_work(s),
    }


SHORT_NAMES = ("claim", "submit", "poll", "list", "list_admin", "expired", "unsettled", "claimable")


def time_operations(url: str, model: str, tenant: str, job_id: str, runs: int = 30) -> dict[str, list[float]]:
    """Seconds of each operation's statements in process, `runs` times (each run rolled
    back): the database's share of the figures, without HTTP, gunicorn or the client
    around it."""
    engine, out = get_engine(url), {}
    for short, operation in zip(SHORT_NAMES, operations(model, tenant, job_id).values()):
        latencies = []
        for _ in range(runs):
            with Session(engine) as session:
                started = time.perf_counter()
                operation(session)
                latencies.append(time.perf_counter() - started)
                session.rollback()
        out[f"sql:{short}"] = latencies
    return out


def _listing(session: Session, principal: Principal) -> None:
    queries.list_jobs(session, principal, None, 100, None)


def explain(connection, dialect: str, statement: str, parameters) -> list[str]:
    cursor = connection.cursor()
    try:
        if dialect == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            return [row[-1] for row in cursor.fetchall()]
        cursor.execute("EXPLAIN " + statement, parameters)
        return [row[0] for row in cursor.fetchall()]
    finally:
        cursor.close()


SQLITE_FULL_SCAN = re.compile(r"^\s*SCAN (\w+)(?! USING)")
POSTGRES_FULL_SCAN = re.compile(r"Seq Scan on (\w+)")


def full_scans(dialect: str, plan: list[str]) -> list[str]:
    """The ledger tables (jobs, job_items) this plan reads whole."""
    pattern = SQLITE_FULL_SCAN if dialect == "sqlite" else POSTGRES_FULL_SCAN
    return [m.group(1) for line in plan if (m := pattern.search(line)) and m.group(1) in LEDGER_TABLES]


def hot_path_plans(url: str, model: str, tenant: str, job_id: str) -> dict[str, list[dict]]:
    """{operation: [{sql, plan, full_scans}]} of every statement of every operation."""
    engine = get_engine(url)
    out: dict[str, list[dict]] = {}
    for name, operation in operations(model, tenant, job_id).items():
        with Session(engine) as session:
            with captured(engine) as statements:
                operation(session)
            connection = session.connection().connection.dbapi_connection
            out[name] = [_explained(connection, engine.dialect.name, sql, params) for sql, params in statements]
            session.rollback()
    return out


def _explained(connection, dialect: str, sql: str, params) -> dict:
    plan = explain(connection, dialect, sql, params)
    return {"sql": " ".join(sql.split()), "plan": plan, "full_scans": full_scans(dialect, plan)}


def print_plans(backend: str, plans: dict[str, list[dict]]) -> int:
    """Print every plan; returns how many read a ledger table whole."""
    flagged = 0
    print(f"\n--- hot-path plans on {backend} ---")
    for name, statements in plans.items():
        print(f"\n[{name}]")
        for entry in statements:
            mark = f"  !! FULL SCAN of {', '.join(entry['full_scans'])}" if entry["full_scans"] else ""
            flagged += bool(entry["full_scans"])
            print(f"  SQL: {entry['sql'][:400]}{mark}")
            for line in entry["plan"]:
                print(f"      {line}")
    print(f"\n{flagged} statement(s) read a whole ledger table on {backend}")
    return flagged
