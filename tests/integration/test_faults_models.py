"""Fault tests inside the model call: out of memory, a hanging item, cancellation that
reaches a running model, and a message that is not JSON."""
from __future__ import annotations

import base64
import json
import pickle
import time
import uuid

import pytest

from genq.devstack import wait_for
from shared.queue import queue_name
from tests.helpers.ledger import assert_ledger_consistent

pytestmark = pytest.mark.integration


def test_out_of_memory_halves_the_micro_batch(make_stack):
    stack = make_stack()
    worker = stack.start_worker()
    job_id = stack.submit({"model": "fault", "prompts": [f"oom {i}" for i in range(8)]})
    job = stack.wait_terminal(job_id, timeout=60)
    assert job["state"] == "succeeded" and job["counts"]["succeeded"] == 8
    assert "fault now runs micro-batches of 2" in worker.log()
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


def test_out_of_memory_at_one_item_fails_that_item_and_the_worker_goes_on(make_stack):
    stack = make_stack()
    stack.start_worker()
    job_id = stack.submit({"model": "fault", "prompts": ["ok 0", "oom-always 1", "ok 2"]})
    job = stack.wait_terminal(job_id, timeout=60)
    assert job["state"] == "failed" and job["counts"]["succeeded"] == 2
    failed = stack.items(job_id)[1]
    assert failed["state"] == "failed" and failed["error"].startswith("out_of_memory")
    next_job = stack.submit({"model": "fault", "prompts": ["ok 3"]})
    assert stack.wait_terminal(next_job, timeout=60)["state"] == "succeeded"
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


def test_a_hanging_item_times_out_and_the_worker_serves_the_next_job(make_stack):
    stack = make_stack(slice_soft_time_limit=4, slice_hard_time_limit=30)
    stack.start_worker()
    job_id = stack.submit({"model": "fault", "prompts": ["hang 0"]})
    job = stack.wait_terminal(job_id, timeout=60)
    assert job["state"] == "failed"
    assert stack.items(job_id)[0]["error"].startswith("timeout")
    next_job = stack.submit({"model": "fault", "prompts": ["ok 1"]})
    assert stack.wait_terminal(next_job, timeout=60)["state"] == "succeeded"
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


@pytest.mark.parametrize("body", [
    {"model": "tiny-text", "prompts": [f"cancel me {i}" for i in range(200)],
     "params": {"max_new_tokens": 100, "do_sample": True, "seed": 1}},
    {"model": "tiny-sd", "prompts": [f"picture {i}" for i in range(24)],
     "params": {"num_inference_steps": 40, "width": 64, "height": 64, "seed": 1}},
], ids=["text", "image"])
def test_cancel_reaches_a_running_model_within_two_seconds(make_stack, body):
    stack = make_stack(slice_max_items=64)
    stack.start_worker()
    job_id = stack.submit(body)
    wait_for(lambda: stack.get(f"/v1/jobs/{job_id}").json()["counts"]["succeeded"] > 0, 120, interval=0.02)
    asked = time.monotonic()
    assert stack.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = stack.wait_terminal(job_id, timeout=30)
    took = time.monotonic() - asked
    assert job["state"] == "cancelled"
    assert took < 2.0, f"cancel took {took:.2f}s"
    counts = job["counts"]
    assert counts["succeeded"] > 0 and counts["cancelled"] > 0
    assert counts["succeeded"] + counts["cancelled"] == counts["total"]
    assert_ledger_consistent(stack.database_url, stack.storage_dir)


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_message_is_refused_and_runs_no_code(make_stack, fault_redis, tmp_path):
    stack = make_stack()
    worker = stack.start_worker()
    marker = tmp_path / "pwned"
    body = pickle.dumps(((_Exploit(str(marker)),), {}, {}))
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": "genq.wake", "id": str(uuid.uuid4()), "argsrepr": "()", "kwargsrepr": "{}"},
        "properties": {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4()), "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue_name("fault")}, "priority": 0},
    }
    fault_redis.client().lpush(queue_name("fault"), json.dumps(message))
    wait_for(lambda: "untrusted content" in worker.log() or "ContentDisallowed" in worker.log(), 30,
             what="the worker to refuse the pickle message")
    assert not marker.exists()
    assert worker.alive()
    job_id = stack.submit({"model": "fault", "prompts": ["ok 0"]})
    assert stack.wait_terminal(job_id, timeout=60)["state"] == "succeeded"
