"""Fault tests around Redis and the database: a Redis restart that loses everything,
Redis down at submit, database connections killed mid-commit, duplicate and stale
wake-ups, and leases left behind by a worker that vanished."""
from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy

from genq.devstack import RedisServer, wait_for
from shared import ledger
from shared.db import session_scope
from shared.orm import ItemState, JobItem, utcnow
from shared.queue import WAKE_TASK, queue_name
from tests.fault_runner import journal_entries
from tests.helpers.ledger import assert_ledger_consistent

pytestmark = pytest.mark.integration


def test_a_redis_restart_that_loses_everything(make_stack, fault_redis, tmp_path):
    stack = make_stack()
    stack.start_reconciler()
    stack.start_worker()
    running = stack.submit({"model": "fault", "prompts": [f"slow {i}" for i in range(8)]})
    wait_for(lambda: stack.get(f"/v1/jobs/{running}").json()["state"] == "running", 60, interval=0.05)
    queued = [stack.submit({"model": "fault", "prompts": [f"ok {i}"]}) for i in range(50)]
    fault_redis.stop()
    fresh = RedisServer(tmp_path / "fresh-redis", port=fault_redis.port).start()  # same address, no data
    try:
        for job_id in [running, *queued]:
            assert stack.wait_terminal(job_id, timeout=120)["state"] == "succeeded"
        assert_ledger_consistent(stack.database_url, stack.storage_dir)
    finally:
        fresh.stop()


def test_redis_down_at_submit_is_accepted_and_runs_later(make_stack, fault_redis, tmp_path):
    """The documented choice: 202 with the job stored; the reconciler sends its wake-up."""
    stack = make_stack()
    fault_redis.stop()
    response = stack.post("/v1/jobs", json={"model": "fault", "prompts": ["ok 1", "ok 2"]})
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert stack.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    fault_redis.start()
    stack.start_reconciler()
    stack.start_worker()
    assert stack.wait_terminal(job_id, timeout=60)["state"] == "succeeded"


def test_database_connections_killed_during_result_commits(make_stack, backend):
    if backend != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    stack = make_stack()
    stack.start_reconciler()
    stack.start_worker()
    job_id = stack.submit({"model": "fault", "prompts": [f"ok {i}" for i in range(200)]})
    killer = BackendKiller(stack.database_url, "genq-worker%")
    killer.start()
    try:
        job = stack.wait_terminal(job_id, timeout=180)
    finally:
        killer.stop()
    assert killer.killed > 0
    assert job["state"] == "succeeded" and job["counts"]["succeeded"] == 200
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


class BackendKiller(threading.Thread):
    """Terminates the worker's PostgreSQL sessions again and again while a job runs."""

    def __init__(self, url: str, application_pattern: str):
        super().__init__(daemon=True)
        self.engine = sqlalchemy.create_engine(url)
        self.pattern = application_pattern
        self.killed = 0
        self._halt = threading.Event()

    def run(self):
        query = sqlalchemy.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE :pattern AND pid <> pg_backend_pid()")
        while not self._halt.wait(0.15):
            with self.engine.begin() as connection:
                self.killed += sum(1 for (ok,) in connection.execute(query, {"pattern": self.pattern}) if ok)

    def stop(self):
        self._halt.set()
        self.join(10)
        self.engine.dispose()


def test_duplicate_and_stale_wakeups_are_no_ops(make_stack, journal, fault_redis):
    stack = make_stack()
    job_id = stack.submit({"model": "fault", "prompts": [f"ok {i}" for i in range(6)]})
    message = fault_redis.client().lindex(queue_name("fault"), 0)
    fault_redis.client().rpush(queue_name("fault"), message)  # the same wake-up, delivered twice
    worker = stack.start_worker()
    assert stack.wait_terminal(job_id, timeout=60)["state"] == "succeeded"
    finished_at = stack.get(f"/v1/jobs/{job_id}").json()["finished_at"]
    send = _celery(stack)
    for _ in range(3):  # wake-ups for a model whose work is all finished
        send.send_task(WAKE_TASK, args=["fault"], queue=queue_name("fault"))
    wait_for(lambda: worker.log().count("succeeded in") >= 5, 30, what="the extra wake-ups to be handled")
    assert Counter(index for index, _, _ in journal_entries(journal)) == Counter(range(6))
    assert stack.get(f"/v1/jobs/{job_id}").json()["finished_at"] == finished_at
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


def _celery(stack):
    from shared.queue import make_celery
    from shared.settings import Settings

    return make_celery(Settings(redis_url=stack.redis_url))


@pytest.mark.parametrize("attempts_spent,outcome", [(1, "succeeded"), (3, "failed")])
def test_a_lease_left_expired_with_no_message(make_stack, fault_redis, attempts_spent, outcome):
    """A worker vanished holding a slice, and its wake-up is gone from Redis too."""
    stack = make_stack()
    job_id = stack.submit({"model": "fault", "prompts": ["ok 0", "ok 1"]})
    fault_redis.client().flushall()
    with session_scope(stack.database_url) as session:
        slice_ = ledger.claim_slice(session, model="fault", owner="vanished", max_items=2,
                                       lease_seconds=1, now=utcnow() - timedelta(minutes=5))
        session.query(JobItem).filter(JobItem.lease_id == slice_.lease_id).update({"attempts": attempts_spent})
    stack.start_reconciler()
    stack.start_worker()
    job = stack.wait_terminal(job_id, timeout=60)
    assert job["state"] == outcome
    if outcome == "failed":
        assert all("lease expired" in item["error"] for item in stack.items(job_id))
    with session_scope(stack.database_url) as session:
        assert all(item.state != ItemState.RUNNING for item in session.query(JobItem))
    assert_ledger_consistent(stack.database_url, stack.storage_dir)
