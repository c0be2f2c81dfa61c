"""Webhooks: the outbox written with the job's final state, the deliverer against a real
HTTP receiver on loopback (signatures verified with the `standardwebhooks` package),
retries, 410, redirects, and the SSRF guard. SQLite and PostgreSQL."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from shared import ledger, watch, webhooks
from shared.db import session_scope
from shared.errors import InvalidRequest
from shared.orm import Job, JobState
from shared.settings import Settings
from shared.tallies import Tallies
from shared.watch import Watch
from shared.webhook_orm import TenantWebhook, WebhookAttempt, WebhookDelivery
from tests.helpers.webhook_receiver import Receiver, payload_ids
from worker.deliverer import Deliverer, post


def make_settings(database_url, **overrides) -> Settings:
    return Settings(database_url=database_url, webhook_allow_private=True,
                    webhook_retry_seconds=[0.05, 0.05, 0.05], **overrides)


def finished_job(url: str, tenant: str = "t1", webhook: dict | None = None, cancel: bool = False) -> str:
    """A one-item job that ends (succeeded, or cancelled while queued) in the transaction
    the outbox row must be written in."""
    with session_scope(url) as session:
        job = ledger.create_job(session, model="m", task="text-generation", params={}, inputs=[("p", 1)],
                                tenant=tenant)
        job.webhook = webhook
        session.flush()
        if cancel:
            ledger.cancel_job(session, job)
            return job.id
        slice_ = ledger.claim_slice(session, model="m", owner="w", max_items=1, lease_seconds=60)
        ledger.record_item_success(session, slice_.lease_id, slice_.items[0].id, text="out")
        assert ledger.settle_job(session, job.id) == JobState.SUCCEEDED
        return job.id


def secret_for(url: str, tenant: str = "t1", endpoint: str | None = None) -> str:
    with session_scope(url) as session:
        _row, secret = webhooks.set_tenant_endpoint(session, tenant, endpoint, None)
    return secret


def deliveries(url: str, job_id: str) -> list[WebhookDelivery]:
    with session_scope(url) as session:
        return webhooks.deliveries_of_job(session, job_id)


def attempts(url: str, delivery_id: str) -> list[WebhookAttempt]:
    with session_scope(url) as session:
        return list(session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)))


def deliver_until_settled(deliverer: Deliverer, url: str, job_id: str, timeout: float = 10) -> WebhookDelivery:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliverer.run_once()
        [delivery] = deliveries(url, job_id)
        if delivery.state != "pending":
            return delivery
        time.sleep(0.05)
    raise AssertionError(f"delivery still pending: {delivery.last_error}")


def test_the_outbox_row_is_written_with_the_final_state(database_url):
    job_id = finished_job(database_url, webhook=webhooks.job_webhook("https://hooks.example.com/x", None))
    [delivery] = deliveries(database_url, job_id)
    assert delivery.event == "job.completed" and delivery.state == "pending" and delivery.id.startswith("msg_")
    assert delivery.payload["data"]["id"] == job_id and delivery.payload["data"]["counts"]["succeeded"] == 1
    unasked = finished_job(database_url, webhook=webhooks.job_webhook("https://hooks.example.com/x", ["job.failed"]))
    assert deliveries(database_url, unasked) == []
    assert deliveries(database_url, finished_job(database_url)) == []  # no webhook, no tenant default


def test_a_receiver_that_fails_twice_gets_it_on_the_third_attempt_signed(database_url):
    secret = secret_for(database_url)
    with Receiver(secret, answers=[500, 503]) as receiver:
        job_id = finished_job(database_url, webhook=webhooks.job_webhook(receiver.url, None))
        delivery = deliver_until_settled(Deliverer(make_settings(database_url)), database_url, job_id)
    assert delivery.state == "delivered" and delivery.attempts == 3
    assert [r["status"] for r in receiver.requests] == [500, 503, 200]
    assert all(r["payload"] is not None for r in receiver.requests)  # every attempt verified
    assert set(payload_ids(receiver)) == {delivery.id}  # one event id, however many attempts
    [payload] = receiver.verified()
    assert payload["type"] == "job.completed" and payload["data"]["id"] == job_id
    assert receiver.requests[0]["path"] == "/hooks/genq?x=1"
    assert receiver.requests[0]["headers"]["webhook-signature"].startswith("v1,")
    assert [a.status_code for a in attempts(database_url, delivery.id)] == [500, 503, 200]


def test_each_attempt_is_counted_for_metrics_by_event_and_result(database_url, redis_server):
    """The deliverer runs in the reconciler, whose watch counts each attempt in Redis."""
    settings = make_settings(database_url, redis_url=redis_server.url)
    redis_server.client().flushdb()
    watch.install(Watch.from_settings(settings))
    try:
        with Receiver(secret_for(database_url), answers=[500]) as receiver:
            job_id = finished_job(database_url, webhook=webhooks.job_webhook(receiver.url, None))
            deliver_until_settled(Deliverer(settings), database_url, job_id)
    finally:
        watch.install(None)
    counts = Tallies(redis_server.client()).read().counters["webhook_attempts"]
    assert counts == {("job.completed", "retrying"): 1, ("job.completed", "delivered"): 1}


def test_the_tenant_default_gets_cancelled_jobs_and_a_410_disables_it(database_url):
    secret = secret_for(database_url)
    with Receiver(secret, answers=[410]) as receiver:
        assert secret_for(database_url, endpoint=receiver.url) is None  # the secret stays; it is not shown again
        job_id = finished_job(database_url, cancel=True)
        delivery = deliver_until_settled(Deliverer(make_settings(database_url)), database_url, job_id)
    assert delivery.event == "job.cancelled" and delivery.state == "failed" and "410" in delivery.last_error
    with session_scope(database_url) as session:
        assert session.get(TenantWebhook, "t1").disabled_at is not None
    assert deliveries(database_url, finished_job(database_url)) == []  # disabled: nothing more is written


def test_retries_end_and_redirects_are_not_followed(database_url):
    secret = secret_for(database_url)
    with Receiver(secret, answers=[302] * 10, location="http://127.0.0.1:9/elsewhere") as receiver:
        job_id = finished_job(database_url, webhook=webhooks.job_webhook(receiver.url, None))
        delivery = deliver_until_settled(Deliverer(make_settings(database_url)), database_url, job_id)
    assert delivery.state == "failed" and delivery.attempts == 4  # the first try and three retries
    assert len(receiver.requests) == 4 and delivery.last_error == "answered 302"


def test_loopback_metadata_and_ipv6_loopback_are_refused_without_the_override(database_url):
    closed = Settings(database_url=database_url)
    for url in ("http://127.0.0.1:8000/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/x",
                "http://[::ffff:127.0.0.1]/x", "http://10.1.2.3/", "http://100.64.0.1/", "http://[fd00::1]/",
                "http://localhost/x", "ftp://example.com/x", "file:///etc/passwd", "http:///nohost"):
        with pytest.raises(InvalidRequest):
            webhooks.check_url(url, closed)
    webhooks.check_url("https://hooks.example.com/genq", closed)  # a name: checked where it resolves
    allow_listed = Settings(database_url=database_url, webhook_allowed_hosts=["hooks.example.com"])
    with pytest.raises(InvalidRequest, match="ALLOWED_HOSTS"):
        webhooks.check_url("https://other.example.com/genq", allow_listed)
    webhooks.check_url("http://127.0.0.1:8000/x", Settings(database_url=database_url, webhook_allow_private=True))
    # At delivery the name is resolved and every address checked (localhost: 127.0.0.1 and ::1).
    outcome = post("http://localhost:9/x", "{}", {}, timeout=2, allow_private=False)
    assert outcome.status is None and outcome.error.startswith("refused:") and "internal address" in outcome.error


def test_a_delivery_refused_at_send_time_is_recorded_and_retried(database_url):
    secret_for(database_url)
    job_id = finished_job(database_url, webhook=webhooks.job_webhook("http://localhost:9/x", None))
    deliverer = Deliverer(Settings(database_url=database_url, webhook_retry_seconds=[60]))
    deliverer.run_once()
    [delivery] = deliveries(database_url, job_id)
    assert delivery.state == "pending" and delivery.attempts == 1 and delivery.last_error.startswith("refused:")
    with session_scope(database_url) as session:
        assert session.scalars(select(Job.state).where(Job.id == job_id)).one() == JobState.SUCCEEDED


def test_rotating_a_secret_keeps_the_tenant_endpoint_and_events(database_url):
    first = secret_for(database_url, endpoint="https://hooks.example/genq")
    with session_scope(database_url) as session:
        webhooks.set_tenant_endpoint(session, "t1", "https://hooks.example/genq", ["job.failed"])
    with session_scope(database_url) as session:
        second = webhooks.rotate_secret(session, "t1")
    with session_scope(database_url) as session:
        row = session.get(TenantWebhook, "t1")
        assert second != first and row.secret == second
        assert row.url == "https://hooks.example/genq" and row.events == ["job.failed"]
        fresh = webhooks.rotate_secret(session, "t2")  # a tenant without settings gets its first secret
        assert session.get(TenantWebhook, "t2").secret == fresh and session.get(TenantWebhook, "t2").url is None
