"""A queued job's place in its model's queue, predicted before any claim, against the
order the claims then really take (the same rule: turns, priority, age, full slices)."""
from __future__ import annotations

import pytest

from shared import ledger
from shared.db import session_scope
from shared.ledger import Ledger, ResultRow
from shared.ledger.queue_position import outlook
from shared.orm import Job

SLICE = 4


def submit(url, tenant: str, n: int, priority: int = 5, model: str = "m", params: dict | None = None) -> str:
    with session_scope(url) as session:
        return ledger.create_job(session, model=model, task="text-generation", params=params or {"max_new_tokens": 4},
                                 inputs=[(f"p{i}", i) for i in range(n)], priority=priority, tenant=tenant).id


def predict(url, job_id: str, scan_limit: int = 1000):
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        counts = ledger.item_counts(session, [job_id])[job_id]
        return outlook(session, job, pending=counts.pending, slice_items=SLICE, scan_limit=scan_limit)


def claim_everything(url, model: str = "m") -> list[str]:
    """Claim slice after slice until none is left; the job of every item, in claim order."""
    book, order = Ledger(url), []
    while (claimed := book.claim(model, owner="w", max_items=SLICE, lease_seconds=60, max_attempts=3)) is not None:
        order.extend(item.job_id for item in claimed.items)
        book.record_results(claimed.lease_id, [ResultRow(item.id, text="x") for item in claimed.items])
        book.release(claimed, holds_items=False)
    return order


def test_predicted_places_are_the_claims_real_order(database_url):
    jobs = [
        submit(database_url, "a", 3), submit(database_url, "b", 6), submit(database_url, "a", 2),
        submit(database_url, "c", 2), submit(database_url, "a", 5), submit(database_url, "b", 1),
        submit(database_url, "a", 1, priority=9), submit(database_url, "c", 9),
    ]
    predicted = {job_id: predict(database_url, job_id) for job_id in jobs}
    order = claim_everything(database_url)
    assert len(order) == 29
    for job_id in jobs:
        first = order.index(job_id)
        last = len(order) - 1 - order[::-1].index(job_id)
        view = predicted[job_id]
        assert view.exact
        assert view.place.items_ahead == first, job_id
        assert view.place.position == 1 + len(set(order[:first])), job_id
        assert view.items_before_end == last + 1, job_id


def test_the_next_job_is_first_with_nothing_ahead(database_url):
    job_id = submit(database_url, "a", 3)
    view = predict(database_url, job_id)
    assert (view.place.position, view.place.items_ahead, view.items_before_end) == (1, 0, 3)
    assert predict(database_url, submit(database_url, "a", 2, model="other")).place.position == 1


def test_a_running_job_has_no_place_but_an_end_and_a_finished_one_neither(database_url):
    job_id = submit(database_url, "a", 6)
    book = Ledger(database_url)
    claimed = book.claim("m", owner="w", max_items=SLICE, lease_seconds=60, max_attempts=3)
    view = predict(database_url, job_id)
    assert view.place is None and view.items_before_end == 2  # its 2 pending items; 4 are running
    book.record_results(claimed.lease_id, [ResultRow(item.id, text="x") for item in claimed.items])
    book.release(claimed, holds_items=False)
    claim_everything(database_url)
    assert predict(database_url, job_id) is None


def test_past_the_scan_limit_the_figures_are_lower_bounds(database_url):
    for _ in range(5):
        submit(database_url, "a", 2)
    last = submit(database_url, "a", 1)
    view = predict(database_url, last, scan_limit=3)
    assert not view.exact
    assert (view.place.position, view.place.items_ahead) == (4, 6)
    assert predict(database_url, last, scan_limit=5).exact is False
    assert predict(database_url, last, scan_limit=6).exact is True


def test_the_place_and_the_metrics_read_no_ledger_table_whole(database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL rightly scans a table of a few rows; bench/flat.py's method checks it at size")
    from sqlalchemy.orm import Session

    from bench import flat_plans
    from shared.db import get_engine
    from web import queries

    for tenant in ("a", "b", "a", "c"):
        submit(database_url, tenant, 3)
    Ledger(database_url).claim("m", owner="w", max_items=SLICE, lease_seconds=60, max_attempts=3)
    last = submit(database_url, "b", 2)
    engine = get_engine(database_url)
    with Session(engine) as session, flat_plans.captured(engine) as statements:
        job = session.get(Job, last)
        assert outlook(session, job, pending=2, slice_items=SLICE, scan_limit=100).place.position > 1
        assert queries.open_work_by_model(session)
        connection = session.connection().connection.dbapi_connection
        plans = [flat_plans._explained(connection, "sqlite", sql, params) for sql, params in statements]
    assert len(plans) >= 5
    assert [(plan["sql"], plan["plan"]) for plan in plans if plan["full_scans"]] == []


def test_jobs_submitted_at_the_same_instant_are_placed_by_the_claims_order_of_ids(database_url):
    """The jobs ahead of one of the same priority and age are those with a lower id: the
    row comparison (created_at, id) of its range, as the claim orders them."""
    from sqlalchemy import update

    jobs = [submit(database_url, tenant, n, priority=priority)
            for tenant, n, priority in (("a", 2, 5), ("a", 3, 5), ("b", 1, 5), ("a", 1, 7), ("a", 2, 5), ("b", 2, 7))]
    with session_scope(database_url) as session:
        session.execute(update(Job).values(created_at=session.get(Job, jobs[0]).created_at))
    predicted = {job_id: predict(database_url, job_id) for job_id in jobs}
    order = claim_everything(database_url)
    for job_id in jobs:
        first = order.index(job_id)
        assert predicted[job_id].place.items_ahead == first, job_id
        assert predicted[job_id].place.position == 1 + len(set(order[:first])), job_id
