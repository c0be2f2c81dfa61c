"""The job state machine and the claim, on SQLite and PostgreSQL."""
from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from shared import ledger
from shared.db import session_scope
from shared.errors import Conflict
from shared.ledger import results, turns
from shared.orm import ItemState, Job, JobItem, JobState, TenantTurn, utcnow
from tests.helpers.ledger import assert_counters_match_items, tenants_with_wrong_pending_totals
from web.queries import JOB_ID


def submit(url, model="m", n=5, priority=5) -> str:
    with session_scope(url) as session:
        job = ledger.create_job(
            session, model=model, task="text-generation", params={"max_new_tokens": 4},
            inputs=[(f"p{i}", i) for i in range(n)], priority=priority,
        )
        return job.id


def claim(url, model="m", n=2, owner="w1", lease=60.0, now=None):
    with session_scope(url) as session:
        return ledger.claim_slice(session, model=model, owner=owner, max_items=n, lease_seconds=lease, now=now)


def states(url, job_id):
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        items = session.query(JobItem).filter_by(job_id=job_id).order_by(JobItem.index).all()
        return job.state, [i.state for i in items]


def test_ids_are_uuid7_and_sort_in_the_order_they_were_made():
    first = ledger.new_id()
    time.sleep(0.002)
    burst = [ledger.new_id() for _ in range(10_000)]
    assert all(JOB_ID.match(job_id) for job_id in [first, *burst])  # what the API takes as a job's id
    assert {(uuid.UUID(job_id).version, uuid.UUID(job_id).variant) for job_id in burst} == {(7, uuid.RFC_4122)}
    assert len(set(burst)) == len(burst)
    assert first < min(burst)  # a later millisecond sorts later (within one, the order is random)


def test_jobs_submitted_in_turn_get_ids_in_that_order(database_url):
    """What keeps every index that starts with a job's id appending next to the last
    entry instead of writing a random page of the history."""
    job_ids = []
    for _ in range(5):
        job_ids.append(submit(database_url, n=1))
        time.sleep(0.002)
    assert job_ids == sorted(job_ids)


def test_claim_takes_items_in_order_and_starts_the_job(database_url):
    job_id = submit(database_url, n=5)
    slice_ = claim(database_url, n=2)
    assert [i.index for i in slice_.items] == [0, 1]
    assert slice_.job_ids == [job_id] and slice_.params == {"max_new_tokens": 4}
    job_state, item_states = states(database_url, job_id)
    assert job_state == JobState.RUNNING
    assert item_states == [ItemState.RUNNING] * 2 + [ItemState.PENDING] * 3


def test_two_claims_never_share_an_item(database_url):
    submit(database_url, n=5)
    first, second, third = claim(database_url, n=2), claim(database_url, n=2, owner="w2"), claim(database_url, n=2)
    indices = [i.index for s in (first, second, third) for i in s.items]
    assert indices == [0, 1, 2, 3, 4]
    assert claim(database_url) is None


def test_claim_order_is_priority_then_age(database_url):
    old = submit(database_url, n=1, priority=5)
    urgent = submit(database_url, n=1, priority=9)
    assert claim(database_url, n=1).job_ids == [urgent]
    assert claim(database_url, n=1).job_ids == [old]
    assert claim(database_url, model="other") is None


def test_a_slice_takes_items_of_several_jobs_in_claim_order(database_url):
    old = submit(database_url, n=2, priority=5)
    urgent = submit(database_url, n=1, priority=9)
    slice_ = claim(database_url, n=4)
    assert [(item.job_id, item.index) for item in slice_.items] == [(urgent, 0), (old, 0), (old, 1)]
    assert slice_.job_ids == [urgent, old] and not slice_.more_waiting
    assert states(database_url, old)[0] == states(database_url, urgent)[0] == JobState.RUNNING


def test_jobs_share_a_slice_only_when_their_parameters_differ_at_most_in_the_seed(database_url):
    with session_scope(database_url) as session:
        first, same, other = (ledger.create_job(session, model="m", task="text-generation", params=params,
                                                inputs=[("p", 1)]).id
                              for params in ({"max_new_tokens": 4, "seed": 1}, {"max_new_tokens": 4, "seed": 2},
                                             {"max_new_tokens": 5, "seed": 1}))
    slice_ = claim(database_url, n=8)
    assert slice_.job_ids == [first, same] and slice_.more_waiting
    assert claim(database_url, n=8).job_ids == [other]


def test_a_slice_holds_one_tenant_and_tenants_take_turns(database_url):
    a1, a2, b1 = (submit_as(database_url, tenant) for tenant in ("a", "a", "b"))
    assert claim(database_url, n=8).job_ids == [a1, a2]  # nobody was served yet: by name
    a3 = submit_as(database_url, "a")
    later = submit_as(database_url, "default")  # a tenant never served goes before one served
    assert claim(database_url, n=8).job_ids == [b1]
    assert claim(database_url, n=8).job_ids == [later]
    assert claim(database_url, n=8).job_ids == [a3]
    assert claim(database_url, n=8) is None


def submit_as(url, tenant: str) -> str:
    with session_scope(url) as session:
        return ledger.create_job(session, model="m", task="text-generation", params={}, inputs=[("p", 1)],
                                 tenant=tenant).id


def test_results_are_written_once_and_the_job_settles(database_url):
    job_id = submit(database_url, n=2)
    slice_ = claim(database_url, n=2)
    with session_scope(database_url) as session:
        assert ledger.record_item_success(session, slice_.lease_id, slice_.items[0].id, text="a")
        assert not ledger.record_item_success(session, slice_.lease_id, slice_.items[0].id, text="again")
        assert not ledger.record_item_success(session, "someone-else", slice_.items[1].id, text="x")
        assert ledger.record_item_failure(session, slice_.lease_id, slice_.items[1].id, "boom")
    with session_scope(database_url) as session:
        assert ledger.settle_job(session, job_id) == JobState.FAILED
        counts = ledger.item_counts(session, [job_id])[job_id]
        assert (counts.succeeded, counts.failed, counts.progress) == (1, 1, 1.0)
        assert session.get(Job, job_id).error == "1 of 2 items failed"
        assert session.get(JobItem, slice_.items[0].id).output_text == "a"


def test_a_job_with_unfinished_items_does_not_settle(database_url):
    job_id = submit(database_url, n=2)
    slice_ = claim(database_url, n=1)
    with session_scope(database_url) as session:
        ledger.record_item_success(session, slice_.lease_id, slice_.items[0].id, text="a")
    with session_scope(database_url) as session:
        assert ledger.settle_job(session, job_id) is None


def test_released_items_go_back_to_pending_without_spending_an_attempt(database_url):
    job_id = submit(database_url, n=3)
    slice_ = claim(database_url, n=3)
    with session_scope(database_url) as session:
        assert ledger.release_slice(session, slice_.lease_id) == 3
    with session_scope(database_url) as session:
        assert {i.attempts for i in session.query(JobItem).filter_by(job_id=job_id)} == {0}
    assert [i.index for i in claim(database_url, n=3).items] == [0, 1, 2]


def test_releasing_expired_leases_skips_rows_another_session_holds(database_url):
    """A worker cut off mid-statement holds its rows until its connection is found dead:
    the release takes every other expired item at once instead of queueing behind it."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: no other session can hold a row")
    from sqlalchemy import text

    job_id = submit(database_url, n=2)
    past = utcnow() - timedelta(hours=1)
    held, other = claim(database_url, n=1, lease=1, now=past), claim(database_url, n=1, lease=1, now=past)
    with session_scope(database_url) as holder:  # the cut-off worker: a row lock it keeps
        holder.execute(text("SELECT 1 FROM job_items WHERE id = :id FOR UPDATE"), {"id": held.items[0].id})
        with session_scope(database_url) as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))  # without SKIP LOCKED: waits, then fails
            assert ledger.release_expired_leases(session, max_attempts=3) == 1
    with session_scope(database_url) as session:
        by_id = {i.id: i.state for i in session.query(JobItem).filter_by(job_id=job_id)}
        assert by_id[other.items[0].id] == ItemState.PENDING and by_id[held.items[0].id] == ItemState.RUNNING
        assert ledger.release_expired_leases(session, max_attempts=3) == 1  # the lock is gone: a later pass


def test_expired_leases_are_reclaimed_then_failed_at_the_cap(database_url):
    job_id = submit(database_url, n=1)
    past = utcnow() - timedelta(hours=1)
    for attempt in range(1, 3):
        stale = claim(database_url, n=1, lease=1, now=past)
        assert stale is not None
        with session_scope(database_url) as session:
            assert ledger.release_expired_leases(session, max_attempts=3) == 1
    stale = claim(database_url, n=1, lease=1, now=past)
    with session_scope(database_url) as session:
        ledger.release_expired_leases(session, max_attempts=3)
        assert not ledger.record_item_success(session, stale.lease_id, stale.items[0].id, text="late")
    with session_scope(database_url) as session:
        item = session.query(JobItem).filter_by(job_id=job_id).one()
        assert item.state == ItemState.FAILED and item.attempts == 3 and "3 attempts" in item.error
        assert ledger.unsettled_job_ids(session) == [job_id]
        assert ledger.settle_job(session, job_id) == JobState.FAILED


def test_the_leases_of_dead_owners_are_released_before_they_expire(database_url):
    """A worker's pool process that died: its items go back as an expiry sends them (the
    attempt kept, each a suspect, failed at the cap); a live owner's lease stays, and so
    does one of another worker whose node name shares the prefix's letters."""
    dead_job, live_job, other_job = submit(database_url, n=2), submit(database_url, n=1), submit(database_url, n=1)
    dead = claim(database_url, n=2, owner="gpu_0@host:41")
    live = claim(database_url, n=1, owner="gpu_0@host:42")
    other = claim(database_url, n=1, owner="gpu00@host:41")  # `_` is no wildcard here
    assert {dead.job_ids[0], live.job_ids[0], other.job_ids[0]} == {dead_job, live_job, other_job}
    with session_scope(database_url) as session:
        assert sorted(ledger.lease_owners(session, "gpu_0@host:")) == ["gpu_0@host:41", "gpu_0@host:42"]
        assert ledger.release_leases_of(session, ["gpu_0@host:41"], max_attempts=3) == 2
        assert ledger.lease_owners(session, "gpu_0@host:") == ["gpu_0@host:42"]
    assert states(database_url, dead_job) == (JobState.RUNNING, [ItemState.PENDING] * 2)
    assert states(database_url, live_job)[1] == states(database_url, other_job)[1] == [ItemState.RUNNING]
    with session_scope(database_url) as session:
        assert not ledger.record_item_success(session, dead.lease_id, dead.items[0].id, text="late")
        assert [i.attempts for i in session.query(JobItem).filter_by(job_id=dead_job)] == [1, 1]
    for attempt in (2, 3):  # each runs alone now; dying every time, it fails at the cap
        alone = claim(database_url, n=2, owner=f"gpu_0@host:{attempt}0")
        assert len(alone.items) == 1
        with session_scope(database_url) as session:
            ledger.release_leases_of(session, [f"gpu_0@host:{attempt}0"], max_attempts=2)
    with session_scope(database_url) as session:
        first = session.query(JobItem).filter_by(job_id=dead_job, index=0).one()
        assert first.state == ItemState.FAILED and "2 attempts" in first.error and "process died" in first.error
        assert_counters_match_items(session.query(Job).all(), session.query(JobItem).all())
        assert tenants_with_wrong_pending_totals(session) == {}


def test_a_job_cancelled_while_its_worker_is_lost_ends_cancelled_when_the_lease_expires(database_url):
    """The held items of a cancelling job are cancelled when their lease expires, not
    given back: no claim takes a cancelling job's items, so pending ones would keep the
    job cancelling for good (and out of the reconciler's unsettled jobs)."""
    job_id = submit(database_url, n=3)
    other = submit(database_url, n=1)
    lost = claim(database_url, n=2, owner="gone", lease=1, now=utcnow() - timedelta(hours=1))
    claim(database_url, n=2, owner="gone", lease=1, now=utcnow() - timedelta(hours=1))  # job_id's last, other's
    with session_scope(database_url) as session:
        ledger.cancel_jobs(session, [job_id])
    assert states(database_url, job_id)[0] == JobState.CANCELLING
    with session_scope(database_url) as session:
        assert ledger.release_expired_leases(session, max_attempts=3) == 4
    assert states(database_url, job_id) == (JobState.CANCELLING, [ItemState.CANCELLED] * 3)
    assert states(database_url, other) == (JobState.RUNNING, [ItemState.PENDING])  # not cancelled: given back
    with session_scope(database_url) as session:
        assert ledger.unsettled_job_ids(session) == [job_id]
        assert ledger.settle_job(session, job_id) == JobState.CANCELLED
        assert not ledger.record_item_success(session, lost.lease_id, lost.items[0].id, text="late")
    assert_counts_are_the_items(database_url, [job_id, other])


def test_cancel_a_queued_job_is_immediate(database_url):
    job_id = submit(database_url, n=3)
    with session_scope(database_url) as session:
        job = ledger.cancel_job(session, session.get(Job, job_id))
        assert job.state == JobState.CANCELLED
    assert states(database_url, job_id) == (JobState.CANCELLED, [ItemState.CANCELLED] * 3)
    assert claim(database_url) is None


def test_cancel_a_running_job_keeps_finished_items(database_url):
    job_id = submit(database_url, n=4)
    slice_ = claim(database_url, n=2)
    with session_scope(database_url) as session:
        ledger.record_item_success(session, slice_.lease_id, slice_.items[0].id, text="kept")
    with session_scope(database_url) as session:
        job = ledger.cancel_job(session, session.get(Job, job_id))
        assert job.state == JobState.CANCELLING
        assert ledger.cancelling_jobs(session, [job_id]) == {job_id}
    with session_scope(database_url) as session:
        ledger.release_slice(session, slice_.lease_id)
    with session_scope(database_url) as session:
        assert ledger.settle_job(session, job_id) == JobState.CANCELLED
    assert states(database_url, job_id)[1] == [ItemState.SUCCEEDED] + [ItemState.CANCELLED] * 3


def test_cancel_a_finished_job_is_a_conflict(database_url):
    job_id = submit(database_url, n=1)
    slice_ = claim(database_url, n=1)
    with session_scope(database_url) as session:
        ledger.record_item_success(session, slice_.lease_id, slice_.items[0].id, text="x")
    with session_scope(database_url) as session:
        ledger.settle_job(session, job_id)
    with session_scope(database_url) as session, pytest.raises(Conflict):
        ledger.cancel_job(session, session.get(Job, job_id))


def test_cancel_many_jobs_at_once_leaves_a_finished_one_as_it_is(database_url):
    queued, running, finished = submit(database_url, model="a", n=2), submit(database_url, model="b", n=3), \
        submit(database_url, model="c", n=1)
    held = claim(database_url, model="b", n=1)
    done = claim(database_url, model="c", n=1)
    with session_scope(database_url) as session:
        ledger.record_item_success(session, done.lease_id, done.items[0].id, text="x")
    with session_scope(database_url) as session:
        ledger.settle_job(session, finished)
    with session_scope(database_url) as session:
        ledger.cancel_jobs(session, [queued, running, finished])
    assert states(database_url, queued) == (JobState.CANCELLED, [ItemState.CANCELLED] * 2)
    assert states(database_url, running) == (JobState.CANCELLING,
                                             [ItemState.RUNNING, ItemState.CANCELLED, ItemState.CANCELLED])
    assert states(database_url, finished) == (JobState.SUCCEEDED, [ItemState.SUCCEEDED])
    assert held.job_ids == [running]


def test_models_with_claimable_work(database_url):
    submit(database_url, model="a", n=1)
    submit(database_url, model="b", n=1)
    claim(database_url, model="b", n=1)
    with session_scope(database_url) as session:
        assert ledger.models_with_claimable_work(session) == ["a"]
        assert ledger.has_claimable_work(session, "a") and not ledger.has_claimable_work(session, "b")


def test_a_model_has_claimable_work_when_any_of_its_tenants_has_some(database_url):
    """The reconciler's search looks past the turns without work: here the two tenants
    served longest ago (first in turn order) have all their work running, and the third
    tenant's pending item must still be found."""
    for tenant in ("a-idle", "b-idle", "c-waiting", "c-waiting"):
        submit_as(database_url, tenant)
    for _tenant in ("a-idle", "b-idle", "c-waiting"):  # one item each, in turn order
        claim(database_url, n=1)
    with session_scope(database_url) as session:
        assert ledger.models_with_claimable_work(session) == ["m"]
        in_turn_order = select(TenantTurn.tenant).where(TenantTurn.model == "m").order_by(*turns.TURN_ORDER)
        assert list(session.scalars(in_turn_order)) == ["a-idle", "b-idle", "c-waiting"]
    claim(database_url, n=1)
    with session_scope(database_url) as session:
        assert ledger.models_with_claimable_work(session) == []
        assert session.query(TenantTurn).filter_by(model="m").count() == 3  # the turns stay; none has work


def test_an_abandoned_slice_keeps_its_attempts_and_fails_at_the_cap(database_url):
    job_id = submit(database_url, n=2)
    slice_ = claim(database_url, n=2)
    with session_scope(database_url) as session:
        assert ledger.abandon_slice(session, slice_.lease_id, error="DataError: boom", max_attempts=3) == 2
    # Both items are now suspects: each runs alone. Item 0 keeps breaking its slice.
    for attempt in (2, 3):
        alone = claim(database_url, n=2)
        assert [i.index for i in alone.items] == [0]
        with session_scope(database_url) as session:
            ledger.abandon_slice(session, alone.lease_id, error="DataError: boom", max_attempts=3)
    survivor = claim(database_url, n=2)
    assert [i.index for i in survivor.items] == [1]
    with session_scope(database_url) as session:
        ledger.record_item_success(session, survivor.lease_id, survivor.items[0].id, text="fine")
    assert claim(database_url) is None
    with session_scope(database_url) as session:
        items = session.query(JobItem).filter_by(job_id=job_id).order_by(JobItem.index).all()
        assert [(i.state, i.attempts) for i in items] == [(ItemState.FAILED, 3), (ItemState.SUCCEEDED, 2)]
        assert items[0].error == "DataError: boom (attempt 3 of 3)" and items[1].error is None
        assert ledger.settle_job(session, job_id) == JobState.FAILED


def test_retry_puts_failed_items_back(database_url):
    job_id = submit(database_url, n=2)
    slice_ = claim(database_url, n=2)
    with session_scope(database_url) as session:
        ledger.record_item_success(session, slice_.lease_id, slice_.items[0].id, text="ok")
        ledger.record_item_failure(session, slice_.lease_id, slice_.items[1].id, "boom")
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        with pytest.raises(Conflict):
            ledger.retry_job(session, job)  # still running: not settled yet
    with session_scope(database_url) as session:
        ledger.settle_job(session, job_id)
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert ledger.retry_job(session, job) == 1
        assert job.state == JobState.QUEUED and job.error is None
    again = claim(database_url, n=2)
    assert [i.index for i in again.items] == [1]
    with session_scope(database_url) as session, pytest.raises(Conflict):
        ledger.record_item_success(session, again.lease_id, again.items[0].id, text="ok")
        ledger.settle_job(session, job_id)
        ledger.retry_job(session, session.get(Job, job_id))  # nothing failed now


def test_a_timed_out_slice_fails_its_unfinished_items(database_url):
    job_id = submit(database_url, n=3)
    slice_ = claim(database_url, n=3)
    with session_scope(database_url) as session:
        ledger.record_item_success(session, slice_.lease_id, slice_.items[0].id, text="ok")
        assert ledger.fail_held_items(session, slice_.lease_id, "timeout: too slow") == 2
    assert states(database_url, job_id)[1] == [ItemState.SUCCEEDED, ItemState.FAILED, ItemState.FAILED]


def test_item_counts_match_the_items_in_every_state(database_url):
    """The counters each verb keeps agree with a plain count of the items, for several
    jobs at once, through claims, results, a give-back, an expired lease, a cancel and a
    retry; a job that does not exist counts nothing."""
    job_id, other, third = submit(database_url, n=20), submit(database_url, n=1), submit(database_url, n=3)
    first = claim(database_url, n=8)  # 8 of job_id's
    with session_scope(database_url) as session:
        results.record_results(session, first.lease_id, [ledger.ResultRow(item.id, text="ok", job_id=item.job_id)
                                                         for item in first.items[:6]])
        ledger.record_item_failure(session, first.lease_id, first.items[6].id, "boom")  # its job looked up
    claim(database_url, n=3, owner="gone", lease=1.0, now=utcnow() - timedelta(seconds=10))  # expired
    given_back = claim(database_url, n=2, owner="w2")
    with session_scope(database_url) as session:
        assert ledger.release_slice(session, given_back.lease_id) == 2
        assert ledger.release_expired_leases(session, max_attempts=3) == 3
    assert_counts_are_the_items(database_url, [job_id, other, third])
    with session_scope(database_url) as session:
        counts = ledger.item_counts(session, [job_id, other, "0" * 32])
    assert counts[job_id] == ledger.Counts(total=20, pending=12, running=1, succeeded=6, failed=1)
    assert counts[other] == ledger.Counts(total=1, pending=1)
    assert counts["0" * 32] == ledger.Counts()
    with session_scope(database_url) as session:
        ledger.cancel_jobs(session, [job_id, third])
    with session_scope(database_url) as session:
        ledger.record_item_success(session, first.lease_id, first.items[7].id, text="late")  # still held
    with session_scope(database_url) as session:
        ledger.settle_job(session, job_id)
        assert ledger.retry_job(session, session.get(Job, job_id)) == 1
    assert_counts_are_the_items(database_url, [job_id, other, third])
    with session_scope(database_url) as session:
        counts = ledger.item_counts(session, [job_id, third])
    assert counts[job_id] == ledger.Counts(total=20, pending=1, succeeded=7, cancelled=12)
    assert counts[third] == ledger.Counts(total=3, cancelled=3)


def assert_counts_are_the_items(url, job_ids):
    with session_scope(url) as session:
        jobs = session.query(Job).filter(Job.id.in_(job_ids)).all()
        assert_counters_match_items(jobs, session.query(JobItem).filter(JobItem.job_id.in_(job_ids)).all())
        assert tenants_with_wrong_pending_totals(session) == {}
