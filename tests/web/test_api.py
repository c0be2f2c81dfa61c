"""The /v1 contract through the Flask app, with a real database and a real Redis."""
from __future__ import annotations

import time

import pytest

from shared.db import session_scope
from shared.orm import Job
from tests.helpers.ledger import work_by_hand


def job_count(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.query(Job).count()


def wakeups_queued(redis_server, model: str) -> int:
    return redis_server.client().llen(f"model.{model}")


def test_submit_commits_the_job_then_sends_a_wakeup(client, settings, redis_server):
    response = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a", "b", "c"], "params": {"seed": 10}})
    assert response.status_code == 202
    body = response.get_json()
    assert body["state"] == "queued"
    assert response.headers["Location"] == f"/v1/jobs/{body['id']}" == body["links"]["self"]
    assert wakeups_queued(redis_server, "tiny-text") == 1
    job = client.get(f"/v1/jobs/{body['id']}").get_json()
    assert job["counts"] == {"total": 3, "pending": 3, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert job["progress"] == 0 and job["task"] == "text-generation" and job["params"]["seed"] == 10
    assert job["params"]["max_new_tokens"] == 16  # the registry's default
    items = client.get(f"/v1/jobs/{body['id']}/items").get_json()["items"]
    assert [(i["index"], i["prompt"], i["seed"], i["state"]) for i in items] == [
        (0, "a", 10, "pending"), (1, "b", 11, "pending"), (2, "c", 12, "pending")]


def test_inputs_carry_their_own_seeds(client):
    body = client.post("/v1/jobs", json={"model": "tiny-sd", "inputs": [{"prompt": "x", "seed": 7}, {"prompt": "y"}],
                                         "params": {"width": 64, "height": 32}}).get_json()
    items = client.get(f"/v1/jobs/{body['id']}/items").get_json()["items"]
    assert items[0]["seed"] == 7 and isinstance(items[1]["seed"], int)


def test_ten_thousand_items_in_one_request(client, settings):
    response = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": [f"p{i}" for i in range(10_000)]})
    assert response.status_code == 202
    job = client.get(response.headers["Location"]).get_json()
    assert job["counts"]["total"] == 10_000
    page = client.get(f"{response.headers['Location']}/items?offset=9990&limit=50").get_json()
    assert [i["index"] for i in page["items"]] == list(range(9990, 10_000)) and page["next_offset"] is None


BAD_REQUESTS = [
    ({"model": "nope", "prompts": ["a"]}, 400, "unknown_model", "model"),
    ({"model": "tiny-text", "prompts": []}, 400, "invalid_request", "prompts"),
    ({"model": "tiny-text"}, 400, "invalid_request", None),
    ({"model": "tiny-text", "prompts": [""]}, 400, "invalid_request", "prompts.0"),
    ({"model": "tiny-text", "prompts": ["a"], "params": {"max_new_tokens": 129}}, 400, "limit_exceeded", "params.max_new_tokens"),
    ({"model": "tiny-text", "prompts": ["a"], "params": {"temperature": 0}}, 400, "invalid_request", "params.temperature"),
    ({"model": "tiny-text", "prompts": ["a"], "params": {"top_p": 1.5}}, 400, "invalid_request", "params.top_p"),
    ({"model": "tiny-text", "prompts": ["a"], "params": {"width": 64}}, 400, "invalid_request", "params.width"),
    ({"model": "tiny-sd", "prompts": ["a"], "params": {"width": 65}}, 400, "invalid_request", "params.width"),
    ({"model": "tiny-sd", "prompts": ["a"], "params": {"num_inference_steps": 51}}, 400, "limit_exceeded", "params.num_inference_steps"),
    ({"model": "tiny-text", "prompts": ["a"], "priority": 10}, 400, "invalid_request", "priority"),
    ({"model": "tiny-text", "prompts": ["a"], "state": "succeeded"}, 400, "invalid_request", "state"),
    ({"model": "tiny-text", "inputs": [{"prompt": "a", "seed": -1}]}, 400, "invalid_request", "inputs.0.seed"),
    ([1, 2], 400, "invalid_request", None),
]


@pytest.mark.parametrize("body,status,code,field", BAD_REQUESTS)
def test_bad_requests_are_refused_before_anything_is_written(client, settings, redis_server, body, status, code, field):
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"]
    assert job_count(settings) == 0 and wakeups_queued(redis_server, "tiny-text") == 0


def test_malformed_json_and_oversized_bodies(client, settings):
    response = client.post("/v1/jobs", data="{not json", content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_request"
    response = client.post("/v1/jobs", data="x" * (settings.max_body_bytes + 1), content_type="application/json")
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "request_entity_too_large"


def test_too_many_items_and_too_long_prompts(client, settings):
    too_many = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"] * (settings.max_items_per_job + 1)})
    assert too_many.status_code == 400 and too_many.get_json()["error"]["field"] == "prompts"
    too_long = client.post("/v1/jobs", json={"model": "tiny-text", "inputs": [{"prompt": "a" * (settings.max_prompt_chars + 1)}]})
    assert too_long.get_json()["error"]["field"] == "inputs.0.prompt"


@pytest.mark.parametrize("path", ["/v1/jobs/unknown", "/v1/jobs/unknown/items", "/v1/jobs/unknown/items/0/output"])
def test_unknown_job_is_404_json(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert client.post("/v1/jobs/unknown/cancel").status_code == 404


def test_unknown_route_and_method_are_json(client):
    assert client.get("/v2/nothing").get_json()["error"]["code"] == "not_found"
    assert client.put("/v1/jobs").status_code == 405


def test_cancel_a_queued_job(client):
    job_id = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a", "b"]}).get_json()["id"]
    body = client.post(f"/v1/jobs/{job_id}/cancel").get_json()
    assert body["state"] == "cancelled" and body["counts"]["cancelled"] == 2
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200


def test_outputs_are_served_from_the_row(client, settings):
    job_id = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a", "b"]}).get_json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/items/0/output").status_code == 409
    work_by_hand(settings.database_url, "tiny-text", ["hello"], settle=False)
    response = client.get(f"/v1/jobs/{job_id}/items/0/output")
    assert response.status_code == 200 and response.mimetype == "text/plain" and response.data == b"hello"
    item = client.get(f"/v1/jobs/{job_id}/items?limit=1").get_json()["items"][0]
    assert item["output"] == {"text": "hello"} and item["state"] == "succeeded"


def test_list_jobs_pages_with_a_cursor_and_filters_by_state(client):
    ids = [client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"]}).get_json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    first = client.get("/v1/jobs?limit=2").get_json()
    second = client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}").get_json()
    third = client.get(f"/v1/jobs?limit=2&cursor={second['next_cursor']}").get_json()
    seen = [j["id"] for page in (first, second, third) for j in page["jobs"]]
    assert seen == list(reversed(ids)) and third["next_cursor"] is None
    assert [j["id"] for j in client.get("/v1/jobs?state=cancelled").get_json()["jobs"]] == [ids[0]]
    assert client.get("/v1/jobs?state=bogus").get_json()["error"]["field"] == "state"
    assert client.get("/v1/jobs?cursor=!!!").get_json()["error"]["field"] == "cursor"
    assert client.get("/v1/jobs?limit=0").status_code == 400


def test_models_health_and_readiness(client):
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["models"]}
    assert set(models) == {"tiny-text", "tiny-uncond", "tiny-sd"}
    assert models["tiny-sd"]["output"] == "image/png" and models["tiny-text"]["limits"]["max_new_tokens"] == {"max": 128}
    listing = client.get("/v1/models").get_json()  # and in OpenAI's shape, beside genq's own
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == list(models)
    assert {(m["object"], m["owned_by"]) for m in listing["data"]} == {("model", "genq")}
    assert all(isinstance(m["created"], int) and m["created"] > 1_600_000_000 for m in listing["data"])
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readiness_fails_when_redis_is_unreachable(settings, tmp_path):
    from genq.devstack import free_port
    from web.app import create_app

    app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and response.get_json()["checks"]["redis"].startswith("error")


def test_readiness_names_a_service_that_genq_up_is_restarting(settings, tmp_path):
    import json

    from web.app import create_app

    state = tmp_path / "services.json"
    state.write_text(json.dumps({"services": {
        "worker": {"state": "restarting", "pid": None, "restarts": 2, "last_exit": "signal SIGKILL",
                   "restart_at": time.time() + 4.4},
        "reconciler": {"state": "running", "pid": 1, "restarts": 0, "last_exit": None},
        "redis": {"state": "running", "pid": 2, "restarts": 0, "last_exit": None},
    }}))
    response = create_app(settings.model_copy(update={"supervisor_state_file": state})).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": "ok", "redis": "ok", "reconciler": "ok",
                                             "worker": "down: exited with signal SIGKILL; restart 3 in 4 s"}


def test_an_unreachable_database_is_a_503_with_retry_after(settings):
    """A connection refused (or none free in the pool in time) is the database's state,
    not the server's fault: 503 and Retry-After, in each door's envelope, never a 500."""
    from genq.devstack import free_port
    from web.app import create_app

    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/genq"
    client = create_app(settings.model_copy(update={"database_url": dead})).test_client()
    headers = {"Authorization": "Bearer gq_notchecked"}
    for method, path, body in (("GET", "/v1/jobs", None), ("POST", "/v1/jobs", {"model": "tiny-text", "prompts": ["a"]}),
                               ("GET", "/v1/batches", None)):
        response = client.open(path, method=method, json=body, headers=headers)
        assert response.status_code == 503, (path, response.get_json())
        assert response.headers["Retry-After"] == "5"
        error = response.get_json()["error"]
        assert error["code"] == "database_unavailable" and "try again" in error["message"]


def test_submit_with_redis_down_keeps_the_job(settings, api_key):
    """Redis down at submit: the job is committed and answered 202; the worker's start-up
    sweep (and the reconciler) sends its wake-up later."""
    from genq.devstack import free_port
    from web.app import create_app

    app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
    response = app.test_client().post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"]},
                                      headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 202
    assert job_count(settings) == 1
