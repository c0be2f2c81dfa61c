"""Fault tests with real processes: workers killed, stopped, or outlived by their
broker's visibility timeout. Each ends by checking the whole ledger."""
from __future__ import annotations

import re
import signal
from collections import Counter

import pytest

from genq.devstack import wait_for
from tests.fault_runner import journal_entries
from tests.helpers.ledger import assert_ledger_consistent

pytestmark = pytest.mark.integration


def succeeded(stack, job_id) -> int:
    return stack.get(f"/v1/jobs/{job_id}").json()["counts"]["succeeded"]


def kill_the_worker_mid_job(stack) -> str:
    """A 24-item job whose only worker is killed (SIGKILL, whole process group) once 4
    items succeeded: the rest of its slice stays leased to a dead worker."""
    stack.start_reconciler()
    worker = stack.start_worker("worker-a")
    job_id = stack.submit({"model": "fault", "prompts": [f"slow {i}" for i in range(24)]})
    wait_for(lambda: succeeded(stack, job_id) >= 4, 60, interval=0.05)
    worker.signal_group(signal.SIGKILL)
    worker.process.wait(10)
    return job_id


def test_sigkill_of_the_whole_worker_mid_slice(make_stack):
    stack = make_stack()
    job_id = kill_the_worker_mid_job(stack)
    stack.start_worker("worker-b")
    job = stack.wait_terminal(job_id, timeout=120)
    assert job["state"] == "succeeded" and job["counts"]["succeeded"] == 24
    assert assert_ledger_consistent(stack.database_url, stack.storage_dir)["succeeded"] == 24


def test_a_job_cancelled_after_its_worker_died_ends_cancelled(make_stack):
    """The dead worker's slice stays leased until the lease runs out; then the reconciler
    cancels those items (the job is being cancelled, no claim would take them) and
    settles the job, with no worker left running."""
    stack = make_stack()
    job_id = kill_the_worker_mid_job(stack)
    response = stack.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelling", response.text
    job = stack.wait_terminal(job_id, timeout=60)
    counts = job["counts"]
    assert job["state"] == "cancelled" and counts["pending"] == counts["running"] == 0
    assert counts["succeeded"] >= 4 and counts["succeeded"] + counts["cancelled"] == 24
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


def kill_the_pool_child_mid_job(stack) -> tuple[str, int]:
    """A 24-item job whose worker's pool process is killed (SIGKILL) once 4 items
    succeeded; Celery starts another. Returns the job and the killed process's pid."""
    stack.start_reconciler()
    stack.start_worker()
    job_id = stack.submit({"model": "fault", "prompts": [f"slow {i}" for i in range(24)]})
    wait_for(lambda: succeeded(stack, job_id) >= 4, 60, interval=0.05)
    [child] = stack.pool_children()
    child.send_signal(signal.SIGKILL)
    return job_id, child.pid


def test_sigkill_of_the_pool_child(make_stack):
    stack = make_stack()
    job_id, _pid = kill_the_pool_child_mid_job(stack)
    job = stack.wait_terminal(job_id, timeout=120)
    assert job["state"] == "succeeded" and job["counts"]["succeeded"] == 24
    assert stack.processes["worker"].alive()
    assert "WorkerLostError" in stack.processes["worker"].log()
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


def test_the_pool_child_after_a_killed_one_runs_its_slice_again_without_waiting_for_the_lease(make_stack):
    """A lease of 300 s: the items the killed pool process held run again as soon as the
    next pool process takes its first wake-up (the killed one's, requeued by Celery),
    not 300 s later."""
    stack = make_stack(lease_seconds=300)
    job_id, killed = kill_the_pool_child_mid_job(stack)
    job = stack.wait_terminal(job_id, timeout=60)
    assert job["state"] == "succeeded" and job["counts"]["succeeded"] == 24
    assert re.search(rf"released \d+ item\(s\) held by dead process\(es\) \S+:{killed}\b",
                     stack.processes["worker"].log())
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


def test_an_item_that_crashes_its_process_fails_alone_at_the_cap(make_stack):
    stack = make_stack()
    stack.start_reconciler()
    stack.start_worker()
    poisoned = stack.submit({"model": "fault", "prompts": ["ok 0", "ok 1", "crash 2", "ok 3", "ok 4", "ok 5"]})
    other = stack.submit({"model": "fault", "prompts": ["ok a", "ok b", "ok c"]})
    job = stack.wait_terminal(poisoned, timeout=180)
    assert job["state"] == "failed" and job["counts"] == {**job["counts"], "succeeded": 5, "failed": 1}
    crashed = stack.items(poisoned)[2]
    assert crashed["state"] == "failed" and crashed["attempts"] == 3 and "3 attempts" in crashed["error"]
    assert stack.wait_terminal(other, timeout=60)["state"] == "succeeded"
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


def test_warm_shutdown_finishes_the_slice_and_nothing_runs_twice(make_stack, journal):
    stack = make_stack()
    stack.start_reconciler()
    worker = stack.start_worker("worker-a")
    job_id = stack.submit({"model": "fault", "prompts": [f"slow {i}" for i in range(16)]})
    wait_for(lambda: succeeded(stack, job_id) >= 1, 60, interval=0.05)
    assert worker.stop(timeout=30) == 0
    done_by_first = succeeded(stack, job_id)
    assert done_by_first >= 8 and done_by_first % 4 == 0  # the claimed slice of 8 finished
    stack.start_worker("worker-b")
    assert stack.wait_terminal(job_id, timeout=120)["state"] == "succeeded"
    runs = Counter(index for index, _, _ in journal_entries(journal))
    assert sorted(runs) == list(range(16)) and set(runs.values()) == {1}
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


def test_a_slice_that_outlives_the_visibility_timeout_runs_once(make_stack, journal):
    stack = make_stack(broker_visibility_timeout=1,
                       broker_transport_options='{"unacked_restore_interval": 0.2, "unacked_restore_throttle": 1}')
    stack.start_worker("worker-a")
    stack.start_worker("worker-b")
    job_id = stack.submit({"model": "fault", "prompts": [f"slow {i}" for i in range(8)]})
    # One slice of 8 items x 0.3 s; the 1 s visibility timeout lets Redis hand the same
    # wake-up to the other worker while the first still runs it.
    assert stack.wait_terminal(job_id, timeout=60)["state"] == "succeeded"
    runs = Counter(index for index, _, _ in journal_entries(journal))
    assert runs == Counter({i: 1 for i in range(8)})
    assert_ledger_consistent(stack.database_url, stack.storage_dir)
    deliveries = Counter(re.findall(r"genq\.wake\[([0-9a-f-]+)\] received", stack.processes["worker-a"].log() + stack.processes["worker-b"].log()))
    assert max(deliveries.values()) >= 2, "the wake-up was never delivered twice: the test proved nothing"
