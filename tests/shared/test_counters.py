"""Job counters under concurrent workers, and a slice settled with its last results."""
from __future__ import annotations

import threading

import pytest

from shared import ledger
from shared.db import session_scope
from shared.ledger import Ledger, ResultRow, counters
from shared.orm import ItemState, Job, JobItem, JobState
from tests.helpers.ledger import assert_counters_match_items, tenants_with_wrong_pending_totals


def submit(url, n: int) -> str:
    with session_scope(url) as session:
        return ledger.create_job(session, model="m", task="text-generation", params={},
                                 inputs=[(f"p{i}", i) for i in range(n)]).id


def rows_of(slice_):
    return [ResultRow(item.id, text="ok", job_id=item.job_id) for item in slice_.items]


def test_the_last_results_of_a_slice_settle_its_jobs_in_their_own_transaction(database_url):
    job_id = submit(database_url, 4)
    book = Ledger(database_url)
    first, second = (book.claim("m", owner=owner, max_items=2, lease_seconds=60, max_attempts=3) for owner in "ab")
    stored = book.record_results(first.lease_id, rows_of(first), last_of=first)
    assert stored.succeeded == 2 and stored.ended is not None and stored.ended.settled == {}  # b still runs two
    stored = book.record_results(second.lease_id, rows_of(second), last_of=second)
    assert stored.ended.settled == {job_id: []}
    with session_scope(database_url) as session:
        assert session.get(Job, job_id).state == JobState.SUCCEEDED


def test_a_slice_whose_last_results_lost_their_lease_is_not_settled_with_them(database_url):
    submit(database_url, 2)
    book = Ledger(database_url)
    slice_ = book.claim("m", owner="a", max_items=2, lease_seconds=60, max_attempts=3)
    rows = rows_of(slice_)
    with book.transaction() as session:  # the second item's lease was lost and its item taken by another worker
        session.query(JobItem).filter(JobItem.id == rows[1].item_id).update({JobItem.lease_id: "someone-else"})
    stored = book.record_results(slice_.lease_id, rows, last_of=slice_)
    assert (stored.succeeded, stored.lost, stored.ended) == (1, 1, None)


def test_two_workers_finishing_one_job_at_once_settle_it_exactly_once(database_url):
    """Each commits its half of a job and settles in the same transaction: whichever
    commits second must see the first's results (the counters' row lock orders them)."""
    book = Ledger(database_url)
    for _ in range(15):
        job_id = submit(database_url, 4)
        halves = [book.claim("m", owner=owner, max_items=2, lease_seconds=60, max_attempts=3) for owner in "ab"]
        start, settled = threading.Barrier(2), []

        def finish(slice_):
            start.wait()
            settled.append(book.record_results(slice_.lease_id, rows_of(slice_), last_of=slice_).ended.settled)

        threads = [threading.Thread(target=finish, args=(half,)) for half in halves]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(settled, key=len) == [{}, {job_id: []}]
        with session_scope(database_url) as session:
            assert session.get(Job, job_id).state == JobState.SUCCEEDED
            assert_counters_match_items([session.get(Job, job_id)],
                                        session.query(JobItem).filter(JobItem.job_id == job_id).all())
            assert tenants_with_wrong_pending_totals(session) == {}


def test_a_move_in_or_out_of_pending_is_refused_by_add(database_url):
    """It would move a job's pending counter without its tenant's total (the quota's)."""
    job_id = submit(database_url, 1)
    with session_scope(database_url) as session, pytest.raises(ValueError, match="recount"):
        counters.add(session.connection(), [(job_id, ItemState.PENDING, ItemState.CANCELLED)])
