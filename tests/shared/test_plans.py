"""The hot path's query shapes: the claim order across open states, and plans that read
no ledger table whole (bench/flat.py checks PostgreSQL at size)."""
from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from bench import flat_plans
from shared import ledger
from shared.db import session_scope
from shared.ledger.plans import row_check
from shared.orm import ItemState, JobItem
from tests.shared.test_ledger import claim, submit


def test_the_claim_order_merges_running_and_queued_jobs_by_priority_then_age(database_url):
    old = submit(database_url, n=3)
    with session_scope(database_url) as session:  # `old` runs: one item held, two given back
        slice_ = ledger.claim_slice(session, model="m", owner="w", max_items=3, lease_seconds=60)
        ledger.release_slice(session, slice_.lease_id)
    newer = submit(database_url, n=1)
    urgent = submit(database_url, n=1, priority=9)
    assert claim(database_url, n=1).job_ids == [urgent]
    assert [(item.job_id, item.index) for item in claim(database_url, n=8).items] == [
        (old, 0), (old, 1), (old, 2), (newer, 0)]


def test_a_slice_fills_up_from_the_next_jobs_when_the_first_has_few_items(database_url):
    first, second, third = submit(database_url, n=2), submit(database_url, n=3), submit(database_url, n=3)
    assert [(item.job_id, item.index) for item in claim(database_url, n=6).items] == [
        (first, 0), (first, 1), (second, 0), (second, 1), (second, 2), (third, 0)]


def test_a_row_check_keeps_its_values_and_hides_the_column_from_indexes():
    condition = row_check(JobItem.state) == ItemState.PENDING
    assert str(condition.compile(dialect=sqlite.dialect())) == "+job_items.state = ?"
    assert str(condition.compile(dialect=postgresql.dialect())) == "(job_items.state || '') = %(param_1)s"


def test_no_hot_path_statement_reads_a_ledger_table_whole(database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL rightly scans a table of a few rows; bench/flat.py checks it at size")
    job_ids = [submit(database_url, n=3) for _ in range(3)]
    claim(database_url, n=2)
    with session_scope(database_url) as session:
        assert session.scalar(select(JobItem.id).where(row_check(JobItem.state) == ItemState.RUNNING).limit(1))
    plans = flat_plans.hot_path_plans(database_url, "m", "default", job_ids[0])
    statements = [entry for entries in plans.values() for entry in entries]
    assert len(statements) > 20
    assert [(entry["sql"], entry["plan"]) for entry in statements if entry["full_scans"]] == []


def test_every_search_for_claimable_jobs_reads_the_partial_claim_order_index(database_url):
    """The claim, the turn walk, the queue position and the reconciler find jobs with a
    pending item through ix_jobs_claim_order, which holds only those (migration 0012),
    and spell its condition with a literal 0: PostgreSQL's generic plan of a prepared
    statement (psycopg prepares one after its fifth run) cannot prove that
    `pending_items > $1` implies the index's condition, and read the tenant's whole
    history through another index instead (checked by hand with EXPLAIN EXECUTE)."""
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's choice on a table of a few rows says nothing; bench/flat.py checks it at size")
    job_ids = [submit(database_url, n=3) for _ in range(3)]
    claim(database_url, n=2)
    plans = flat_plans.hot_path_plans(database_url, "m", "default", job_ids[0])
    searches = [entry for entries in plans.values() for entry in entries
                if "jobs.pending_items >" in entry["sql"] and not entry["sql"].startswith("UPDATE")]
    assert len(searches) >= 4
    assert [entry["sql"] for entry in searches if "jobs.pending_items > 0 " not in entry["sql"]] == []
    assert [entry["sql"] for entry in searches if "ix_jobs_claim_order" not in " ".join(entry["plan"])] == []


def test_the_claims_search_for_an_item_whose_slice_died_reads_only_such_items(database_url):
    """Each claim first looks for a pending item of its job that already spent an
    attempt; it reads ix_job_items_suspect, which holds such items only, and not the
    job's every pending item (which grew its cost with the job's size)."""
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's choice on a table of a few rows says nothing; checked at size by hand (EXPLAIN)")
    job_id = submit(database_url, n=3)
    plans = flat_plans.hot_path_plans(database_url, "m", "default", job_id)
    searches = [entry for entries in plans.values() for entry in entries if "attempts > 0" in entry["sql"]]
    assert searches
    assert [entry["plan"] for entry in searches if "ix_job_items_suspect" not in " ".join(entry["plan"])] == []
