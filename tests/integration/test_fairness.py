"""Fair share between tenants, measured on a real worker: tenant B's 10 items start after
at most one more slice of tenant A's 5,000."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from genq.devstack import wait_for
from shared.db import session_scope
from shared.orm import Job, JobItem

pytestmark = pytest.mark.integration

SLICE = 64


def claimed_items(url: str, job_id: str, before=None) -> int:
    with session_scope(url) as session:
        query = select(func.count(JobItem.id)).where(JobItem.job_id == job_id, JobItem.started_at.is_not(None))
        if before is not None:
            query = query.where(JobItem.started_at < before)
        return session.scalar(query)


def first_start(url: str, job_id: str):
    with session_scope(url) as session:
        return session.scalar(select(func.min(JobItem.started_at)).where(JobItem.job_id == job_id))


def test_a_small_tenant_waits_for_at_most_one_more_slice(make_stack):
    stack = make_stack(slice_max_items=SLICE)
    stack.start_worker()
    key_a, key_b = stack.new_key("tenant-a"), stack.new_key("tenant-b")
    big = stack.submit({"model": "fault", "prompts": [f"ok {i}" for i in range(5000)]}, key=key_a)
    wait_for(lambda: claimed_items(stack.database_url, big) >= SLICE, 60, interval=0.02)
    claimed_when_b_came = claimed_items(stack.database_url, big)
    small = stack.submit({"model": "fault", "prompts": [f"ok b{i}" for i in range(10)]}, key=key_b)
    assert stack.wait_terminal(small, timeout=120, key=key_b)["state"] == "succeeded"
    a_before_b = claimed_items(stack.database_url, big, before=first_start(stack.database_url, small))
    more_of_a = a_before_b - claimed_when_b_came
    print(f"tenant B's first item started after {a_before_b} of A's items; {more_of_a} of them after B submitted")
    assert more_of_a <= SLICE
    stack.post(f"/v1/jobs/{big}/cancel", key=key_a)
    with session_scope(stack.database_url) as session:
        assert session.get(Job, small).tenant == "tenant-b"


def test_priority_orders_jobs_within_a_tenant(make_stack):
    stack = make_stack(slice_max_items=1)  # one item a slice (a micro-batch of 1): one job at a time, in claim order
    low = stack.submit({"model": "fault-one", "prompts": ["ok low"], "priority": 1})
    high = stack.submit({"model": "fault-one", "prompts": ["ok high"], "priority": 9})
    stack.start_worker()
    stack.wait_terminal(low)
    stack.wait_terminal(high)
    assert first_start(stack.database_url, high) < first_start(stack.database_url, low)


def test_a_worker_running_one_models_long_job_gives_its_other_model_a_turn(make_stack):
    """A wake-up goes on past GENQ_WAKEUP_BUSY_SECONDS only while none of the worker's
    other models has a wake-up queued (worker.turn): through the real broker, with the
    worker's prefetch, the other model's job starts within a few slices, not after the
    long job (100 items of 0.3 s, slices of 4)."""
    stack = make_stack(slice_max_items=4)
    stack.start_worker(models="fault,fault-one")
    long = stack.submit({"model": "fault", "prompts": [f"slow {i}" for i in range(100)]})
    wait_for(lambda: claimed_items(stack.database_url, long) >= 12, 60, interval=0.05)  # past its 1 s budget
    claimed_when_other_came = claimed_items(stack.database_url, long)
    other = stack.submit({"model": "fault-one", "prompts": ["ok other"]})
    assert stack.wait_terminal(other, timeout=60)["state"] == "succeeded"
    more_of_long = claimed_items(stack.database_url, long, before=first_start(stack.database_url, other))
    print(f"{more_of_long - claimed_when_other_came} items of the long job started after the other model's job came")
    assert more_of_long - claimed_when_other_came <= 12  # the budget (1 s) and a slice or two of 1.2 s
    stack.post(f"/v1/jobs/{long}/cancel")


def test_the_pending_quota_refuses_past_the_cap_and_admits_again_once_a_worker_ran_the_items(make_stack):
    """The cap counts pending items across processes: the web's submits add to the
    tenant's total, the worker's claims take from it; another tenant is not counted."""
    stack = make_stack(max_pending_items_per_tenant=60)
    key_a, key_b = stack.new_key("tenant-a"), stack.new_key("tenant-b")
    first = stack.submit({"model": "fault", "prompts": [f"ok {i}" for i in range(50)]}, key=key_a)
    refused = stack.post("/v1/jobs", key=key_a, json={"model": "fault", "prompts": [f"ok {i}" for i in range(11)]})
    assert refused.status_code == 429 and "50 pending items" in refused.json()["error"]["message"], refused.text
    stack.submit({"model": "fault", "prompts": [f"ok b{i}" for i in range(60)]}, key=key_b)  # a tenant of its own
    stack.start_worker()
    assert stack.wait_terminal(first, timeout=120, key=key_a)["state"] == "succeeded"
    again = stack.submit({"model": "fault", "prompts": [f"ok {i}" for i in range(60)]}, key=key_a)
    assert stack.wait_terminal(again, timeout=120, key=key_a)["state"] == "succeeded"
