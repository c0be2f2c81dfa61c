"""Watching the work over real HTTP under the real stack (web under gunicorn, a Celery
worker, Redis, the database): a queued job's place and ETA, a running image job's steps,
and a /metrics scrape after the jobs, parsed with prometheus_client's own parser."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from genq.devstack import Stack, poll
from shared.db import session_scope
from shared.keys import create_api_key
from tests import tiny_models
from tests.helpers.stacks import running_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
SLOW = {"task": "text-generation", "source": ".", "runner": "bench.noop_runner:NoopRunner",
        "micro_batch_size": 4, "options": {"sleep_ms_per_item": 50}}

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path, backend, tiny_model_dirs, redis_server):
    entries = tiny_models.tiny_registry_entries(tiny_model_dirs["text"], tiny_model_dirs["uncond"], tiny_model_dirs["sd"])
    entries["models"]["slow"] = SLOW
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump(entries))
    # an empty Redis database: the counters /metrics reads start at zero
    with running_stack(backend, tmp_path, redis_server, models_file, env={"PYTHONPATH": str(REPO_ROOT)},
                       slice_max_items=8, torch_threads=1) as stack:
        yield stack


def admin_key(stack: Stack) -> str:
    with session_scope(stack.database_url) as session:
        return create_api_key(session, "ops", admin=True)[1]


def samples(text: str) -> dict[tuple, float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_place_eta_progress_and_metrics_over_http(stack):
    ahead = stack.submit({"model": "slow", "prompts": [f"a{i}" for i in range(40)]})
    behind = stack.submit({"model": "slow", "prompts": [f"b{i}" for i in range(8)]})
    first = stack.get(f"/v1/jobs/{behind}").json()
    assert first["state"] == "queued" and first["queue"]["position"] == 2 and first["queue"]["exact"]
    assert 0 < first["queue"]["items_ahead"] <= 40

    def measured():
        body = stack.get(f"/v1/jobs/{behind}").json()
        return body if body["eta_seconds"] is not None or body["state"] == "succeeded" else None

    body = poll(measured, 60)
    assert body["state"] != "succeeded", "the job ended before any ETA was given"
    assert body["eta_reason"] is None and 0 < body["eta_seconds"] < 10  # 48 items at 20 per second at most
    assert stack.wait_terminal(ahead)["state"] == "succeeded" and stack.wait_terminal(behind)["state"] == "succeeded"

    image = stack.submit({"model": "tiny-sd", "prompts": ["a cat", "a dog"], "params": {"num_inference_steps": 50}})
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = stack.get(f"/v1/jobs/{image}").json()
        seen += [item["progress"] for item in body["running_items"]]
        if body["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert body["state"] == "succeeded"
    assert seen and all(progress["steps"] == 50 and 1 <= progress["step"] <= 50 for progress in seen), seen

    scrape = requests.get(f"{stack.base_url}/metrics", headers=stack.auth(admin_key(stack)), timeout=30)
    assert scrape.status_code == 200 and scrape.headers["Content-Type"].startswith("text/plain")
    values = samples(scrape.text)
    assert values[("genq_items_finished_total", (("model", "slow"), ("state", "succeeded")))] == 48
    assert values[("genq_items_finished_total", (("model", "tiny-sd"), ("state", "succeeded")))] == 2
    assert values[("genq_micro_batch_items_sum", (("model", "slow"),))] == 48  # micro-batches of 4 (or fewer)
    assert values[("genq_micro_batch_items_bucket", (("le", "4.0"), ("model", "slow")))] == \
        values[("genq_micro_batch_items_count", (("model", "slow"),))] >= 12
    assert values[("genq_jobs_submitted_total", (("model", "slow"),))] == 2
    assert values[("genq_items_submitted_total", (("model", "slow"),))] == 48
    assert values[("genq_workers", (("model", "tiny-sd"),))] == 1
    assert values[("genq_throughput_items_per_second", (("model", "slow"),))] > 0
    polls = ("genq_http_request_duration_seconds_count",
             (("method", "GET"), ("route", "/v1/jobs/<job_id>"), ("status", "200")))
    assert values[polls] >= 3
    assert not any(name == "genq_jobs_open" for name, _ in values)  # nothing is open any more
    assert requests.get(f"{stack.base_url}/metrics", headers=stack.auth(), timeout=30).status_code == 403
