"""What /metrics tells of the workers and the reconciler, over real HTTP under the real
stack (web under gunicorn, a Celery worker, a reconciler, Redis, the database): item run
time and queue wait, model loads, out-of-memory halvings, lease expiries and reconciler
repairs, all counted in other processes and read by a scrape of the web, parsed with
prometheus_client's own parser."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from genq.devstack import poll
from shared.db import session_scope
from shared.keys import create_api_key
from shared.ledger import Ledger
from shared.ledger.jobs import create_job
from tests import tiny_models
from tests.helpers.stacks import running_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
SLEEP_MS = 50
MICRO_BATCH = 4
SHOWN = ("genq_item_run_seconds_count", "genq_item_run_seconds_sum", "genq_item_queue_wait_seconds_count",
         "genq_item_queue_wait_seconds_sum", "genq_model_load_seconds_count", "genq_model_load_seconds_sum",
         "genq_oom_halvings_total", "genq_leases_expired_total", "genq_reconciler_repairs_total")

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path, backend, tiny_model_dirs, redis_server):
    entries = tiny_models.tiny_registry_entries(tiny_model_dirs["text"], tiny_model_dirs["uncond"], tiny_model_dirs["sd"])
    entries["models"]["slow"] = {"task": "text-generation", "source": ".", "runner": "bench.noop_runner:NoopRunner",
                                 "micro_batch_size": MICRO_BATCH, "options": {"sleep_ms_per_item": SLEEP_MS}}
    entries["models"]["fault"] = {"task": "text-generation", "source": str(tmp_path), "micro_batch_size": MICRO_BATCH,
                                  "runner": "tests.fault_runner:FaultRunner",
                                  "options": {"journal": str(tmp_path / "journal.tsv"), "oom_above": 2}}
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump(entries))
    with running_stack(backend, tmp_path, redis_server, models_file, env={"PYTHONPATH": str(REPO_ROOT)},
                       slice_max_items=8, torch_threads=1, reconcile_interval_seconds=0.5) as stack:
        yield stack


def scrape(stack) -> dict[tuple, float]:
    with session_scope(stack.database_url) as session:
        key = create_api_key(session, "ops", admin=True)[1]
    response = requests.get(f"{stack.base_url}/metrics", headers=stack.auth(key), timeout=30)
    assert response.status_code == 200, response.text
    print("\n".join(line for line in response.text.splitlines() if line.startswith(SHOWN)))  # an excerpt, with -s
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def lost_lease(stack, model: str) -> str:
    """A job whose only item a worker claimed and then lost: its lease ran out. Written
    to the ledger directly, so no wake-up tells the worker about it before the lease is
    gone: the reconciler has to find it."""
    with session_scope(stack.database_url) as session:
        job = create_job(session, model=model, task="text-generation", params={}, inputs=[("lost", 1)],
                         tenant="tests")
        session.commit()
        job_id = job.id
    claimed = Ledger(stack.database_url).claim(model, owner="gone:1", max_items=1, lease_seconds=0.2, max_attempts=3)
    assert claimed is not None and claimed.job_ids == [job_id]
    return job_id


def test_workers_and_the_reconciler_count_what_they_did(stack):
    slow = stack.submit({"model": "slow", "prompts": [f"s{i}" for i in range(12)]})
    oom = stack.submit({"model": "fault", "prompts": [f"oom {i}" for i in range(4)]})
    assert stack.wait_terminal(slow)["state"] == "succeeded"
    assert stack.wait_terminal(oom)["state"] == "succeeded"  # 4 did not fit, 2 + 2 did
    time.sleep(0.3)  # the lease of the hand-claimed item below runs out before a reconciler looks
    lost = lost_lease(stack, "slow")
    time.sleep(0.3)
    stack.start_reconciler()
    assert stack.wait_terminal(lost)["state"] == "succeeded"  # released and woken by the reconciler

    values = poll(lambda: (v := scrape(stack)).get(("genq_reconciler_repairs_total", (("repair", "wakeup_sent"),)))
                  and v, 30)
    slow_label, fault_label = (("model", "slow"),), (("model", "fault"),)
    assert values[("genq_item_run_seconds_count", slow_label)] == 13
    # each item waits for its micro-batch of 4 (or of 1, the lost one) at 50 ms an item
    assert 12 * MICRO_BATCH * SLEEP_MS / 1000 + SLEEP_MS / 1000 <= values[("genq_item_run_seconds_sum", slow_label)] < 60
    assert values[("genq_item_run_seconds_bucket", (("le", "0.1"), ("model", "slow")))] <= 1
    assert values[("genq_item_run_seconds_count", fault_label)] == 4
    assert values[("genq_item_queue_wait_seconds_count", slow_label)] == 13
    assert values[("genq_item_queue_wait_seconds_count", fault_label)] == 4
    assert values[("genq_item_queue_wait_seconds_sum", slow_label)] > 0.5  # the lost item waited that long at least
    assert values[("genq_item_queue_wait_seconds_bucket", (("le", "+Inf"), ("model", "slow")))] == 13
    assert values[("genq_model_load_seconds_count", slow_label)] == 1
    assert values[("genq_model_load_seconds_count", fault_label)] == 1
    assert values[("genq_model_load_seconds_sum", fault_label)] > 0
    assert values[("genq_oom_halvings_total", fault_label)] == 1
    assert ("genq_oom_halvings_total", slow_label) not in values
    assert values[("genq_leases_expired_total", ())] == 1
    assert values[("genq_reconciler_repairs_total", (("repair", "lease_released"),))] == 1
    assert values[("genq_reconciler_repairs_total", (("repair", "wakeup_sent"),))] >= 1
