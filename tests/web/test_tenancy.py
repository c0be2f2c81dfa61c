"""Nobody reads another tenant's work: every endpoint, tried with the other tenant's ids,
answers exactly as for an id that never existed."""
from __future__ import annotations

import pytest

from shared.db import session_scope
from shared.keys import create_api_key, revoke_api_key
from tests.helpers.ledger import work_by_hand
from tests.web.conftest import make_key
from web.app import create_app


@pytest.fixture
def tenants(app, settings):
    """Two tenants with a finished job each (one text item succeeded, one failed)."""
    clients = {}
    for tenant in ("acme", "globex"):
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_key(settings, tenant)}"
        job_id = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a", "b"]}).get_json()["id"]
        finish(settings, job_id)
        clients[tenant] = (client, job_id)
    return clients


def finish(settings, job_id):
    work_by_hand(settings.database_url, "tiny-text", ["secret of " + job_id, RuntimeError("boom")])


ENDPOINTS = [
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/items"),
    ("GET", "/v1/jobs/{id}/items/0/output"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("POST", "/v1/jobs/{id}/retry"),
]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_another_tenants_job_is_a_404_like_a_missing_one(tenants, method, path):
    client, _own = tenants["acme"]
    _other_client, theirs = tenants["globex"]
    never = "0" * 32
    other = client.open(path.format(id=theirs), method=method)
    missing = client.open(path.format(id=never), method=method)
    assert other.status_code == missing.status_code == 404
    assert other.get_json()["error"]["code"] == missing.get_json()["error"]["code"] == "not_found"
    assert other.get_json()["error"]["message"].replace(theirs, never) == missing.get_json()["error"]["message"]
    assert b"secret" not in other.data


def test_own_jobs_work_and_listing_shows_only_them(tenants, app, settings):
    client, own = tenants["acme"]
    assert client.get(f"/v1/jobs/{own}/items/0/output").data == f"secret of {own}".encode()
    assert [job["id"] for job in client.get("/v1/jobs").get_json()["jobs"]] == [own]
    assert client.post(f"/v1/jobs/{own}/retry").status_code == 202
    admin = app.test_client()
    admin.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_key(settings, 'ops', admin=True)}"
    listed = {job["id"] for job in admin.get("/v1/jobs").get_json()["jobs"]}
    assert listed == {own, tenants["globex"][1]}
    assert admin.get(f"/v1/jobs/{tenants['globex'][1]}").status_code == 200


def test_a_revoked_key_is_refused_like_an_unknown_one(settings, redis_server):
    app = create_app(settings.model_copy(update={"auth_cache_seconds": 0}))
    with session_scope(settings.database_url) as session:
        row, key = create_api_key(session, "acme")
    client = app.test_client()
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with session_scope(settings.database_url) as session:
        revoke_api_key(session, row.prefix)
    revoked = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    unknown = client.get("/v1/jobs", headers={"Authorization": "Bearer gq_00000000_x"})
    assert revoked.status_code == unknown.status_code == 401 and revoked.get_json() == unknown.get_json()


def test_a_web_process_trusts_a_checked_key_for_auth_cache_seconds_then_sees_its_revocation(settings, redis_server,
                                                                                              monkeypatch):
    import shared.keys

    now = [1000.0]  # the cache's clock, moved by the test: a loaded machine took 0.5 s between two requests
    monkeypatch.setattr(shared.keys.time, "monotonic", lambda: now[0])
    app = create_app(settings.model_copy(update={"auth_cache_seconds": 0.5}))
    with session_scope(settings.database_url) as session:
        row, key = create_api_key(session, "acme")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    with session_scope(settings.database_url) as session:
        revoke_api_key(session, row.prefix)
    assert client.get("/v1/jobs", headers=headers).status_code == 200  # within the cache's time
    now[0] += 0.6
    assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_a_key_created_after_an_unknown_key_was_tried_works_at_once(app, settings):
    client = app.test_client()
    with session_scope(settings.database_url) as session:
        _row, key = create_api_key(session, "acme")
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}x"}).status_code == 401
    with session_scope(settings.database_url) as session:
        _row, second = create_api_key(session, "acme")
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {second}"}).status_code == 200


def test_idempotency_keys_are_per_tenant(tenants):
    body = {"model": "tiny-text", "prompts": ["same"]}
    acme, _ = tenants["acme"]
    globex, _ = tenants["globex"]
    first = acme.post("/v1/jobs", json=body, headers={"Idempotency-Key": "shared-key"}).get_json()["id"]
    second = globex.post("/v1/jobs", json=body, headers={"Idempotency-Key": "shared-key"}).get_json()["id"]
    assert first != second
    assert globex.get(f"/v1/jobs/{first}").status_code == 404


TRAVERSALS = [
    "/v1/jobs/..%2f..%2fetc%2fpasswd/items/0/output",
    "/v1/jobs/%2e%2e%2f%2e%2e%2f/items/0/output",
    "/v1/jobs/..\\..\\etc/items/0/output",
    "/v1/jobs/%2Fetc%2Fpasswd/items/0/output",
    "/v1/jobs/abc%00def/items/0/output",
    "/v1/jobs/{id}/items/..%2f..%2f/output",
    "/v1/jobs/{id}/items/-1/output",
    "/v1/jobs/{id}/items/%2e%2e/output",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_never_reaches_storage(tenants, path):
    client, own = tenants["acme"]
    response = client.get(path.format(id=own))
    assert response.status_code in (400, 404)
    assert response.is_json and "error" in response.get_json()


def test_pending_items_quota_is_a_429_with_retry_after(settings, redis_server, api_key):
    from web.app import create_app

    app = create_app(settings.model_copy(update={"max_pending_items_per_tenant": 5}))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    assert client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"] * 4}).status_code == 202
    refused = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"] * 2})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert refused.get_json()["error"]["code"] == "quota_exceeded"
    assert client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"]}).status_code == 202


def test_the_rate_limit_is_per_key(settings, redis_server, api_key):
    from web.app import create_app

    app = create_app(settings.model_copy(update={"rate_limit": "3/minute"}))
    limited, other = app.test_client(), app.test_client()
    limited.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_key(settings, 'globex')}"
    statuses = [limited.get("/v1/jobs").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = limited.get("/v1/jobs")
    assert response.get_json()["error"]["code"] == "too_many_requests" and "Retry-After" in response.headers
    assert other.get("/v1/jobs").status_code == 200


def test_cors_is_off_unless_configured(client, settings, redis_server, api_key):
    from web.app import create_app

    assert "Access-Control-Allow-Origin" not in client.get("/v1/jobs", headers={"Origin": "https://x.example"}).headers
    app = create_app(settings.model_copy(update={"cors_origins": ["https://x.example"]}))
    response = app.test_client().get("/v1/jobs", headers={"Origin": "https://x.example", "Authorization": f"Bearer {api_key}"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://x.example"
    preflight = app.test_client().options("/v1/jobs", headers={  # a browser's, before a POST: no key yet
        "Origin": "https://x.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "https://x.example"
    assert "idempotency-key" in preflight.headers["Access-Control-Allow-Headers"].lower()
    other = app.test_client().options("/v1/jobs", headers={"Origin": "https://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in other.headers
