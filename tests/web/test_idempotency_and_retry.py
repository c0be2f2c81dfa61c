"""Idempotent submit and retry of failed items."""
from __future__ import annotations

from shared.db import session_scope
from shared.orm import Job
from shared.queue import WAITING_MARK
from tests.helpers.ledger import work_by_hand
from web import idempotency

BODY = {"model": "tiny-text", "prompts": ["a", "b"]}


def count_jobs(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.query(Job).count()


def test_a_repeated_key_returns_the_first_job(client, settings, redis_server):
    first = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", json=dict(reversed(list(BODY.items()))), headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert count_jobs(settings) == 1 and redis_server.client().llen("model.tiny-text") == 1


def test_the_same_key_with_another_body_is_a_conflict(client, settings):
    client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k2"})
    response = client.post("/v1/jobs", json={**BODY, "prompts": ["c"]}, headers={"Idempotency-Key": "k2"})
    assert response.status_code == 409 and response.get_json()["error"]["field"] == "Idempotency-Key"
    assert count_jobs(settings) == 1


def test_a_key_committed_by_a_concurrent_request_returns_its_job(client, settings, monkeypatch):
    """The other request committed between this one's look-up of the key and its INSERT
    (PostgreSQL raises the unique violation at the INSERT, SQLite would at the commit)."""
    first = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k3"}).get_json()["id"]
    looked_up = []
    real_replay = idempotency.replay

    def replay_not_seen_at_first(session, tenant, key, fingerprint):
        looked_up.append(key)
        return None if len(looked_up) == 1 else real_replay(session, tenant, key, fingerprint)

    monkeypatch.setattr(idempotency, "replay", replay_not_seen_at_first)
    again = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k3"})
    assert again.status_code == 202 and again.get_json()["id"] == first and again.headers["Idempotent-Replayed"] == "true"
    assert count_jobs(settings) == 1


def test_keys_are_checked(client):
    response = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "x" * 256})
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "Idempotency-Key"


def test_retry_puts_failed_items_back_and_wakes_a_worker(client, settings, redis_server):
    job_id = client.post("/v1/jobs", json=BODY).get_json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/retry").status_code == 409  # not finished
    work_by_hand(settings.database_url, "tiny-text", ["ok", RuntimeError("boom")])
    assert client.get(f"/v1/jobs/{job_id}").get_json()["state"] == "failed"
    redis = redis_server.client()
    assert redis.llen("model.tiny-text") == 1  # the submit's (the retry above was refused)
    redis.delete("model.tiny-text", WAITING_MARK.format(model="tiny-text"))  # as a worker takes it
    response = client.post(f"/v1/jobs/{job_id}/retry")
    assert response.status_code == 202
    body = response.get_json()
    assert body["state"] == "queued" and body["counts"]["pending"] == 1 and body["counts"]["succeeded"] == 1
    assert redis.llen("model.tiny-text") == 1
    assert client.post("/v1/jobs/nope/retry").status_code == 404


def test_one_wake_up_waits_per_model_however_many_jobs_are_submitted(client, redis_server):
    redis = redis_server.client()
    for _ in range(5):
        assert client.post("/v1/jobs", json=BODY).status_code == 202
    assert redis.llen("model.tiny-text") == 1
    redis.delete(WAITING_MARK.format(model="tiny-text"))  # a worker took it (and is claiming)
    assert client.post("/v1/jobs", json=BODY).status_code == 202
    assert redis.llen("model.tiny-text") == 2
    assert 0 < redis.ttl(WAITING_MARK.format(model="tiny-text")) <= 30  # a lost message costs at most this
