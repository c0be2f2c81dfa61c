"""What a status poll adds (queue place, ETA, running items' progress) and GET /metrics,
through the app with a real Redis and database; the workers' side is written the way a
worker writes it (`shared.watch` in Redis, the `Ledger` in the database)."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from shared import watch as watch_module
from shared.ledger import Ledger
from shared.orm import JobItem, utcnow
from shared.queue import make_celery
from shared.storage import storage_from_settings
from shared.watch import Watch
from tests.web.conftest import make_key
from tests.web.test_openapi import Conformance
from web.app import create_app
from web.response_models import JobStatusResponse
from worker.batch_sizes import BatchSizes
from worker.reconciler import reconcile_once

MODEL = "tiny-text"


def submit(client, n: int, **extra) -> str:
    response = client.post("/v1/jobs", json={"model": MODEL, "prompts": [f"p{i}" for i in range(n)], **extra})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


@pytest.fixture
def app_settings(settings):
    """These tests check the queue's rule from one poll to the next: each poll reads the
    queue (the outlook a web process keeps between polls is tested on its own below)."""
    return settings.model_copy(update={"outlook_cache_seconds": 0})


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


def test_the_queue_counts_a_slice_as_the_models_micro_batch_where_that_is_larger(settings, api_key):
    """Tenants take turns a slice each; tiny-text's micro-batch (8) is larger than
    GENQ_SLICE_MAX_ITEMS (2 here), so a claim takes 8 items, and so does the queue."""
    client = create_app(settings.model_copy(update={"outlook_cache_seconds": 0, "slice_max_items": 2})).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    submit(client, 20)
    other = {"Authorization": f"Bearer {make_key(settings, 'globex')}"}
    response = client.post("/v1/jobs", json={"model": MODEL, "prompts": ["p"]}, headers=other)
    late = response.get_json()["id"]
    assert client.get(f"/v1/jobs/{late}", headers=other).get_json()["queue"] == {
        "position": 2, "items_ahead": 8, "exact": True}


def test_a_web_process_keeps_a_jobs_place_for_a_second_and_its_own_pending_items_exact(settings, api_key, monkeypatch):
    import web.queries

    now = [1000.0]
    monkeypatch.setattr(web.queries.time, "monotonic", lambda: now[0])
    client = create_app(settings.model_copy(update={"outlook_cache_seconds": 1.0})).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    submit(client, 3)
    third = submit(client, 4)
    assert client.get(f"/v1/jobs/{third}").get_json()["queue"] == {"position": 2, "items_ahead": 3, "exact": True}
    submit(client, 1, priority=9)
    now[0] += 0.5
    assert client.get(f"/v1/jobs/{third}").get_json()["queue"]["position"] == 2  # kept: read 0.5 s ago
    now[0] += 0.6
    assert client.get(f"/v1/jobs/{third}").get_json()["queue"] == {"position": 3, "items_ahead": 4, "exact": True}


def test_a_kept_outlook_moves_with_the_jobs_own_pending_items():
    from shared.ledger.queue_position import Outlook
    from web.queries import RecentOutlooks

    class Job:
        id, state = "j1", "running"

    reads = []
    recent = RecentOutlooks(max_age=60)
    read = lambda: reads.append(1) or Outlook(None, items_before_end=30, exact=True, items_running=8)  # noqa: E731
    assert recent.outlook(Job, 10, read).items_before_end == 30
    assert recent.outlook(Job, 4, read).items_before_end == 24  # six of its own were claimed since
    assert recent.outlook(Job, 0, read).items_before_end == 20
    assert len(reads) == 1
    assert RecentOutlooks(max_age=0).outlook(Job, 10, read) is not None and len(reads) == 2


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


def assert_lease_then_work(eta: float, lease_left: float, work_seconds: float, claimed_at: float) -> None:
    """The ETA is what is left of the lost worker's lease at the status, then the work:
    the test's own steps between the claim and the status took `waited` (over a second
    once on a loaded CI machine), so the lease's part is between `lease_left - waited`
    and `lease_left`."""
    waited = time.time() - claimed_at
    assert lease_left + work_seconds - waited - 0.5 <= eta <= lease_left + work_seconds + 0.5, (eta, waited)


def test_items_held_by_a_lost_worker_add_the_wait_for_their_lease_to_the_eta(client, conform, settings, watch):
    job_id = submit(client, 4)
    book = Ledger(settings.database_url)
    # A worker that stopped renewing: its lease has under half of GENQ_LEASE_SECONDS left.
    left = settings.lease_seconds / 4
    claimed_at = time.time()
    book.claim(MODEL, owner="gone", max_items=2, lease_seconds=left, max_attempts=3)
    now = time.time()
    for i in range(4):  # a live worker doing 2 items per second
        watch.throughput.record(MODEL, "w1", 4, 2.0, now=now - 8 + 2 * i)
    body = status(client, conform, job_id)
    assert body["eta_reason"] == "worker_lost"
    assert_lease_then_work(body["eta_seconds"], left, 4 / 2.0, claimed_at)  # the lease's wait, then its 4 items
    book.claim(MODEL, owner="live", max_items=2, lease_seconds=settings.lease_seconds, max_attempts=3)
    with book.transaction() as session:  # the lost worker's lease expired and its items were claimed again
        session.execute(update(JobItem).where(JobItem.lease_owner == "gone")
                        .values(lease_owner="live", lease_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds)))
    body = status(client, conform, job_id)
    assert body["eta_reason"] is None and body["eta_seconds"] == pytest.approx(4 / 2.0, rel=0.05)


def test_with_no_live_worker_the_lost_workers_items_count_one_worker_after_the_lease(client, conform, settings,
                                                                                     watch):
    job_id = submit(client, 2)
    left = settings.lease_seconds / 4
    claimed_at = time.time()
    Ledger(settings.database_url).claim(MODEL, owner="gone", max_items=2, lease_seconds=left, max_attempts=3)
    past = time.time() - watch.throughput.liveness - 60  # measured, but nobody served the model lately
    for i in range(4):
        watch.throughput.record(MODEL, "w1", 4, 2.0, now=past + 2 * i)
    body = status(client, conform, job_id)
    assert body["eta_reason"] == "worker_lost"
    assert_lease_then_work(body["eta_seconds"], left, 2 / 2.0, claimed_at)  # the lease's wait, then one worker


def test_a_job_a_worker_holds_has_an_eta_though_the_model_was_idle_for_longer_than_the_liveness(
        client, conform, settings, watch):
    """A worker idle for minutes claims the job: its last sample is too old to count it
    live, but the lease it holds says it is at work (until its first commit shows it)."""
    job_id = submit(client, 4)
    past = time.time() - watch.throughput.liveness - 60
    for i in range(4):
        watch.throughput.record(MODEL, "w1", 4, 2.0, now=past + 2 * i)
    assert status(client, conform, job_id)["eta_reason"] == "no_live_worker"  # queued, nobody served lately
    Ledger(settings.database_url).claim(MODEL, owner="w1", max_items=2, lease_seconds=60, max_attempts=3)
    body = status(client, conform, job_id)
    assert body["eta_reason"] is None and body["eta_seconds"] == pytest.approx(4 / 2.0, rel=0.05)


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


@pytest.fixture
def installed(settings):
    """A watch installed in this process, as a worker or the reconciler installs theirs."""
    watch_module.install(Watch.from_settings(settings))
    yield watch_module
    watch_module.install(None)


def test_metrics_read_what_workers_and_the_reconciler_count(client, settings, registry, installed):
    """A real claim's queue wait, a lease that expires under the real reconciler, an
    out-of-memory halving in the real `BatchSizes`, through the hooks workers call."""
    submit(client, 3)
    time.sleep(0.3)
    book = Ledger(settings.database_url)
    claimed = book.claim(MODEL, owner="w1", max_items=2, lease_seconds=0.2, max_attempts=3)
    assert all(0.3 <= seconds < 30 for seconds in claimed.waited.values()), claimed.waited
    installed.claimed(MODEL, claimed.items, claimed.waited)
    installed.model_loaded(MODEL, 1.5)
    BatchSizes().ran_out_of_memory(registry.get(MODEL), {}, 4)
    time.sleep(0.3)  # the lease runs out: the reconciler gives both items back (the submit's wake-up still waits)
    report = reconcile_once(settings, make_celery(settings), storage_from_settings(settings), book)
    assert report.leases_released == 2 and report.wakeups_sent == 0
    installed.slice_started()
    installed.committed(MODEL, 2, 0)

    families = scrape(client, headers={"Authorization": f"Bearer {make_key(settings, 'ops', admin=True)}"})
    assert value(families, "genq_item_queue_wait_seconds_count", model=MODEL) == 2
    assert 0.6 <= value(families, "genq_item_queue_wait_seconds_sum", model=MODEL) < 60
    assert value(families, "genq_item_queue_wait_seconds_bucket", model=MODEL, le="0.1") == 0
    assert value(families, "genq_item_queue_wait_seconds_bucket", model=MODEL, le="+Inf") == 2
    assert value(families, "genq_model_load_seconds_count", model=MODEL) == 1
    assert value(families, "genq_model_load_seconds_sum", model=MODEL) == 1.5
    assert value(families, "genq_model_load_seconds_bucket", model=MODEL, le="1.0") == 0
    assert value(families, "genq_model_load_seconds_bucket", model=MODEL, le="2.5") == 1
    assert value(families, "genq_oom_halvings_total", model=MODEL) == 1
    assert value(families, "genq_leases_expired_total") == 2
    assert value(families, "genq_reconciler_repairs_total", repair="lease_released") == 2
    assert [sample.labels for sample in families["genq_reconciler_repairs"]] == [{"repair": "lease_released"}]
    assert value(families, "genq_item_run_seconds_count", model=MODEL) == 2
    assert value(families, "genq_item_run_seconds_sum", model=MODEL) >= 0
    assert families["genq_leases_expired"][0].labels == {}
