"""A sticky CUDA error under the real stack: the pool process that hit it exits and is
replaced, its slice goes back to the queue, and a fresh process finishes every item
(none failed for good)."""
from __future__ import annotations

import pytest
import yaml

from genq.devstack import wait_for
from tests.fault_runner import journal_entries
from tests.helpers.ledger import assert_ledger_consistent
from worker.device import EXIT_DEVICE_BROKEN

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fault_models_file(tmp_path_factory):
    """The fault model, whose `cuda-error` item breaks the first process that runs it."""
    root = tmp_path_factory.mktemp("device-fault-registry")
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"fault": {
        "task": "text-generation", "source": str(root), "runner": "tests.fault_runner:FaultRunner",
        "micro_batch_size": 4,
        "options": {"journal": str(root / "journal.tsv"), "cuda_error_flag": str(root / "broke-once")},
    }}}))
    return path


def test_a_sticky_cuda_error_replaces_the_process_and_the_items_finish(make_stack, fault_models_file, journal):
    (fault_models_file.parent / "broke-once").unlink(missing_ok=True)
    stack = make_stack()
    worker = stack.start_worker()
    [first_child] = stack.pool_children()
    job_id = stack.submit({"model": "fault", "prompts": ["ok 0", "ok 1", "cuda-error 2", "ok 3", "ok 4"]})
    job = stack.wait_terminal(job_id, timeout=120)
    assert job["state"] == "succeeded" and job["counts"]["succeeded"] == 5
    items = stack.items(job_id)
    assert [item["attempts"] for item in items] == [2] * 5  # the whole slice went back once, none failed
    assert not first_child.is_running()
    assert f"exited with 'exitcode {EXIT_DEVICE_BROKEN}'" in worker.log() or f"status {EXIT_DEVICE_BROKEN}" in worker.log()
    wait_for(lambda: len(stack.pool_children()) == 1, 30)
    pids = {pid for _, _, pid in journal_entries(journal)}
    assert first_child.pid not in pids and len(journal_entries(journal)) == 5
    assert worker.alive()  # the worker stayed; only its pool process was replaced
    assert_ledger_consistent(stack.database_url, stack.storage_dir)
