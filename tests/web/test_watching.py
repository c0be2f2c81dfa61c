"""What a status poll adds (queue place, ETA, running items' progress) and GET /metrics,
through the app with a real Redis and database; the workers' side is written the way a
worker writes it (`shared.watch` in Redis, the `Ledger` in the database)."""
from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.ledger import Ledger
from shared.watch import Watch
from tests.web.conftest import make_key
from tests.web.test_openapi import Conformance
from web.app import create_app
from web.response_models import JobStatusResponse

MODEL = "tiny-text"


def submit(client, n: int, **extra) -> str:
    response = client.post("/v1/jobs", json={"model": MODEL, "prompts": [f"p{i}" for i in range(n)], **extra})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


@pytest.fixture
def watch(settings):
    return Watch.from_settings(settings)


@pytest.fixture
def conform(client):
    return Conformance(client.get("/openapi.json").get_json())


def status(client, conform, job_id: str) -> dict:
    return conform.check(client.get(f"/v1/jobs/{job_id}"), JobStatusResponse, "GET", "/v1/jobs/{job_id}")


def test_a_queued_job_has_a_place_and_no_eta_before_anything_was_measured(client, conform):
    first, second, third = submit(client, 3), submit(client, 2), submit(client, 4)
    assert status(client, conform, first)["queue"] == {"position": 1, "items_ahead": 0, "exact": True}
    body = status(client, conform, third)
    assert body["queue"] == {"position": 3, "items_ahead": 5, "exact": True}
    assert body["eta_seconds"] is None and body["eta_reason"] == "not_measured" and body["running_items"] == []
    urgent = submit(client, 1, priority=9)
    assert status(client, conform, urgent)["queue"]["position"] == 1
    assert status(client, conform, third)["queue"] == {"position": 4, "items_ahead": 6, "exact": True}
    assert status(client, conform, second)["queue"]["position"] == 3


def test_the_eta_divides_what_runs_first_by_the_measured_throughput(client, conform, watch):
    submit(client, 6)
    job_id = submit(client, 4)
    now = time.time()
    for i in range(4):  # one worker that did 2 items per second, the last batch a moment ago
        watch.throughput.record(MODEL, "w1", 4, 2.0, now=now - 8 + 2 * i)
    body = status(client, conform, job_id)
    assert body["eta_reason"] is None and body["eta_seconds"] == pytest.approx(10 / 2.0, rel=0.05)
    for i in range(4):  # a second live worker doubles the throughput
        watch.throughput.record(MODEL, "w2", 4, 2.0, now=now - 8 + 2 * i)
    assert status(client, conform, job_id)["eta_seconds"] == pytest.approx(10 / 4.0, rel=0.05)


def test_running_items_report_their_progress_and_a_finished_job_no_eta(client, conform, settings, watch):
    job_id = submit(client, 3)
    book = Ledger(settings.database_url)
    claimed = book.claim(MODEL, owner="w1", max_items=2, lease_seconds=60, max_attempts=3)
    tracker = watch.progress.tracker(claimed.items)
    tracker(tokens=7)
    body = status(client, conform, job_id)
    assert body["queue"] is None and body["state"] == "running"
    assert [(item["index"], item["progress"]) for item in body["running_items"]] == [(0, {"tokens": 7}),
                                                                                      (1, {"tokens": 7})]
    steps = watch.progress.tracker(claimed.items[:1])
    steps.board.interval = 0
    steps(step=3, steps=20)
    assert status(client, conform, job_id)["running_items"][0]["progress"] == {"step": 3, "steps": 20}
    tracker.close()
    assert status(client, conform, job_id)["running_items"] == []
    client.post(f"/v1/jobs/{job_id}/cancel")
    body = status(client, conform, job_id)
    assert body["eta_seconds"] is None and body["eta_reason"] == "not_open" and body["queue"] is None


def scrape(client, **kwargs) -> dict[str, list]:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return {family.name: family.samples for family in text_string_to_metric_families(response.get_data(as_text=True))}


def value(families, name: str, **labels) -> float:
    for family in families.values():
        for sample in family:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_take_an_admin_key(app, client, settings):
    assert app.test_client().get("/metrics").status_code == 401
    forbidden = client.get("/metrics")  # a tenant's key
    assert forbidden.status_code == 403 and forbidden.get_json()["error"]["code"] == "forbidden"
    admin = f"Bearer {make_key(settings, 'ops', admin=True)}"
    assert client.get("/metrics", headers={"Authorization": admin}).status_code == 200
    public = create_app(settings.model_copy(update={"metrics_public": True})).test_client()
    assert public.get("/metrics").status_code == 200


def test_metrics_read_the_open_work_the_counters_and_the_throughput(client, settings, watch):
    submit(client, 3)
    submit(client, 2)
    Ledger(settings.database_url).claim(MODEL, owner="w1", max_items=2, lease_seconds=60, max_attempts=3)
    watch.tallies.items_finished(MODEL, {"succeeded": 5, "failed": 1})
    watch.throughput.record(MODEL, "w1", 4, 2.0)
    client.get("/v1/models")
    families = scrape(client, headers={"Authorization": f"Bearer {make_key(settings, 'ops', admin=True)}"})
    assert value(families, "genq_jobs_open", model=MODEL, state="queued") == 1
    assert value(families, "genq_jobs_open", model=MODEL, state="running") == 1
    assert value(families, "genq_items_pending", model=MODEL) == 3
    assert value(families, "genq_items_running", model=MODEL) == 2
    assert value(families, "genq_jobs_submitted_total", model=MODEL) == 2
    assert value(families, "genq_items_submitted_total", model=MODEL) == 5
    assert value(families, "genq_items_finished_total", model=MODEL, state="failed") == 1
    assert value(families, "genq_micro_batch_items_count", model=MODEL) == 1
    assert value(families, "genq_micro_batch_items_sum", model=MODEL) == 6
    assert value(families, "genq_workers", model=MODEL) == 1
    assert value(families, "genq_throughput_items_per_second", model=MODEL) == pytest.approx(2.0)
    assert value(families, "genq_http_request_duration_seconds_count", method="GET", route="/v1/models",
                 status="200") == 1
    assert value(families, "genq_http_request_duration_seconds_count", method="POST", route="/v1/jobs",
                 status="202") == 2
