"""The promise fault tests check: every item terminal, one result per succeeded item,
no output file without a row."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.ledger import Ledger, ResultRow, Slice
from shared.orm import ItemState, Job, JobItem, TenantPending

WRITES_TABLE = "chaos_result_writes"


def assert_ledger_consistent(database_url: str, storage_dir: Path) -> dict[str, int]:
    with session_scope(database_url) as session:
        items = session.query(JobItem).all()
        jobs = session.query(Job).all()
    assert all(job.state.is_terminal() for job in jobs), [(j.id, j.state) for j in jobs if not j.state.is_terminal()]
    assert all(item.state.is_terminal() for item in items), [(i.job_id, i.index, i.state) for i in items if not i.state.is_terminal()]
    for item in items:
        has_output = (item.output_text is not None) + (item.output_key is not None)
        assert has_output == (1 if item.state == ItemState.SUCCEEDED else 0), (item.index, item.state)
        assert item.lease_id is None
    assert_counters_match_items(jobs, items)
    with session_scope(database_url) as session:
        assert tenants_with_wrong_pending_totals(session) == {}
    keys = [item.output_key for item in items if item.output_key]
    assert len(keys) == len(set(keys))
    files = {str(p.relative_to(storage_dir)) for p in Path(storage_dir).rglob("*") if p.is_file()} if Path(storage_dir).exists() else set()
    assert files == set(keys), f"files without a row: {sorted(files - set(keys))[:5]}"
    return {state.value: sum(i.state == state for i in items) for state in ItemState}


def assert_counters_match_items(jobs: list[Job], items: list[JobItem]) -> None:
    """Each job's counters (shared.ledger.counters) say what a plain count of its items says."""
    assert jobs_with_wrong_counters(jobs, items) == []


def jobs_with_wrong_counters(jobs: list[Job], items: list[JobItem]) -> list[str]:
    """The jobs whose counters differ from a plain count of their items."""
    counted: dict[tuple[str, ItemState], int] = {}
    for item in items:
        counted[item.job_id, item.state] = counted.get((item.job_id, item.state), 0) + 1
    wrong = []
    for job in jobs:
        kept = {ItemState.PENDING: job.pending_items, ItemState.RUNNING: job.running_items,
                ItemState.FAILED: job.failed_items, ItemState.CANCELLED: job.cancelled_items}
        if kept != {state: counted.get((job.id, state), 0) for state in kept}:
            wrong.append(job.id)
    return wrong


def tenants_with_wrong_pending_totals(session: Session) -> dict[str, tuple[int, int]]:
    """The tenants whose pending total (shared.ledger.tenant_pending, the quota's count)
    differs from the sum of their jobs' pending counters: tenant -> (total, sum)."""
    kept = dict(session.execute(select(TenantPending.tenant, func.sum(TenantPending.pending_items)).group_by(TenantPending.tenant)).all())
    summed = dict(session.execute(select(Job.tenant, func.sum(Job.pending_items)).group_by(Job.tenant)).all())
    return {tenant: (int(kept.get(tenant) or 0), int(summed.get(tenant) or 0)) for tenant in set(kept) | set(summed)
            if int(kept.get(tenant) or 0) != int(summed.get(tenant) or 0)}


def count_result_writes(url: str) -> None:
    """The tests' own instrument: a row per write that marks an item succeeded."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {WRITES_TABLE}")
        connection.exec_driver_sql(f"CREATE TABLE {WRITES_TABLE} (item_id BIGINT NOT NULL)")
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION chaos_count() RETURNS trigger AS $$ BEGIN "
                f"INSERT INTO {WRITES_TABLE} VALUES (NEW.id); RETURN NEW; END $$ LANGUAGE plpgsql")
            connection.exec_driver_sql(
                "CREATE TRIGGER chaos_count AFTER UPDATE ON job_items FOR EACH ROW "
                "WHEN (NEW.state = 'succeeded') EXECUTE FUNCTION chaos_count()")
        else:
            connection.exec_driver_sql(
                f"CREATE TRIGGER chaos_count AFTER UPDATE ON job_items WHEN NEW.state = 'succeeded' "
                f"BEGIN INSERT INTO {WRITES_TABLE} VALUES (NEW.id); END")
    engine.dispose()


def items_written_more_than_once(url: str) -> int:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(text(
            f"SELECT COUNT(*) FROM (SELECT item_id FROM {WRITES_TABLE} GROUP BY item_id HAVING COUNT(*) > 1) d")).scalar()
    engine.dispose()
    return count


def work_by_hand(database_url: str, model: str, outcomes: list[str | dict | Exception], *, settle: bool = True) -> Slice:
    """What a worker does, without one: claim the next slice of `model` (one item per
    outcome), store the outcomes in index order (a str is a text, `{"key": k}` an output
    key, an exception an error), then settle the job, each step through the `Ledger`."""
    ledger = Ledger(database_url)
    slice_ = ledger.claim(model, owner="by-hand", max_items=len(outcomes), lease_seconds=60, max_attempts=3)
    assert slice_ is not None and len(slice_.items) == len(outcomes), slice_
    rows = [ResultRow(item.id, error=str(outcome)) if isinstance(outcome, Exception)
            else ResultRow(item.id, key=outcome["key"]) if isinstance(outcome, dict)
            else ResultRow(item.id, text=outcome)
            for item, outcome in zip(slice_.items, outcomes)]
    ledger.record_results(slice_.lease_id, rows)
    if settle:
        ledger.settle_all(slice_.job_ids)
    return slice_
