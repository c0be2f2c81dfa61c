"""A table of requests that cannot succeed: each is refused with the right status, error
code and field, and nothing is written or enqueued."""
from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from shared.db import session_scope
from shared.orm import Job
from web.openapi import build_document

TEXT = "tiny-text"
IMAGE = "tiny-sd"
UNCOND = "tiny-uncond"


def text(**params):
    return {"model": TEXT, "prompts": ["hello"], "params": params}


def image(**params):
    return {"model": IMAGE, "prompts": ["a cat"], "params": params}


def webhook(url: str):
    return {"model": TEXT, "prompts": ["hello"], "webhook": {"url": url, "events": ["job.cancelled"]}}


NAN = float("nan")

# (name, body, status, code, field)
CASES = [
    ("unknown model", {"model": "nope", "prompts": ["a"]}, 400, "unknown_model", "model"),
    ("model missing", {"prompts": ["a"]}, 400, "invalid_request", "model"),
    ("model wrong type", {"model": 7, "prompts": ["a"]}, 400, "invalid_request", "model"),
    ("model empty", {"model": "", "prompts": ["a"]}, 400, "invalid_request", "model"),
    ("no prompts or inputs", {"model": TEXT}, 400, "invalid_request", None),
    ("both prompts and inputs", {"model": TEXT, "prompts": ["a"], "inputs": [{"prompt": "b"}]}, 400, "invalid_request", None),
    ("empty prompt list", {"model": TEXT, "prompts": []}, 400, "invalid_request", "prompts"),
    ("prompts not a list", {"model": TEXT, "prompts": "a"}, 400, "invalid_request", "prompts"),
    ("empty prompt", {"model": TEXT, "prompts": ["a", ""]}, 400, "invalid_request", "prompts.1"),
    ("prompt wrong type", {"model": TEXT, "prompts": [3]}, 400, "invalid_request", "prompts.0"),
    ("too many items", {"model": TEXT, "prompts": ["a"] * 10_001}, 400, "limit_exceeded", "prompts"),
    ("prompt too many characters", {"model": TEXT, "prompts": ["a" * 4_001]}, 400, "limit_exceeded", "prompts.0"),
    ("prompt too many tokens", {"model": TEXT, "prompts": ["word " * 300]}, 400, "limit_exceeded", "prompts.0"),
    ("input prompt missing", {"model": TEXT, "inputs": [{"seed": 1}]}, 400, "invalid_request", "inputs.0.prompt"),
    ("input extra field", {"model": TEXT, "inputs": [{"prompt": "a", "tenant": "x"}]}, 400, "invalid_request", "inputs.0.tenant"),
    ("seed negative", {"model": TEXT, "inputs": [{"prompt": "a", "seed": -1}]}, 400, "invalid_request", "inputs.0.seed"),
    ("seed too large", {"model": TEXT, "inputs": [{"prompt": "a", "seed": 2**63}]}, 400, "invalid_request", "inputs.0.seed"),
    ("seed a float", {"model": TEXT, "inputs": [{"prompt": "a", "seed": 1.5}]}, 400, "invalid_request", "inputs.0.seed"),
    ("seed a string", text(seed="7"), 400, "invalid_request", "params.seed"),
    ("forged tenant", {"model": TEXT, "prompts": ["a"], "tenant": "globex"}, 400, "invalid_request", "tenant"),
    ("forged state", {"model": TEXT, "prompts": ["a"], "state": "succeeded"}, 400, "invalid_request", "state"),
    ("forged id", {"model": TEXT, "prompts": ["a"], "id": "abc"}, 400, "invalid_request", "id"),
    ("priority above 9", {"model": TEXT, "prompts": ["a"], "priority": 10}, 400, "invalid_request", "priority"),
    ("priority below 0", {"model": TEXT, "prompts": ["a"], "priority": -1}, 400, "invalid_request", "priority"),
    ("priority a string", {"model": TEXT, "prompts": ["a"], "priority": "high"}, 400, "invalid_request", "priority"),
    ("params not an object", {"model": TEXT, "prompts": ["a"], "params": [1]}, 400, "invalid_request", "params"),
    ("unknown text param", text(steps=3), 400, "invalid_request", "params.steps"),
    ("image param on a text model", text(width=64), 400, "invalid_request", "params.width"),
    ("max_new_tokens zero", text(max_new_tokens=0), 400, "invalid_request", "params.max_new_tokens"),
    ("max_new_tokens above the model's limit", text(max_new_tokens=129), 400, "limit_exceeded", "params.max_new_tokens"),
    ("max_new_tokens a string", text(max_new_tokens="8"), 400, "invalid_request", "params.max_new_tokens"),
    ("temperature zero", text(temperature=0), 400, "invalid_request", "params.temperature"),
    ("temperature negative", text(temperature=-1.0), 400, "invalid_request", "params.temperature"),
    ("temperature NaN", text(temperature=NAN), 400, "invalid_request", "params.temperature"),
    ("temperature infinite", text(temperature=float("inf")), 400, "invalid_request", "params.temperature"),
    ("top_p zero", text(top_p=0), 400, "invalid_request", "params.top_p"),
    ("top_p above one", text(top_p=1.01), 400, "invalid_request", "params.top_p"),
    ("top_p NaN", text(top_p=NAN), 400, "invalid_request", "params.top_p"),
    ("top_k negative", text(top_k=-1), 400, "invalid_request", "params.top_k"),
    ("do_sample a string", text(do_sample="yes"), 400, "invalid_request", "params.do_sample"),
    ("n and its other name", text(n=2, num_return_sequences=3), 400, "invalid_request", "params"),
    ("max_new_tokens and max_length", text(max_new_tokens=8, max_length=20), 400, "invalid_request", "params"),
    ("width not a multiple of 8", image(width=65), 400, "invalid_request", "params.width"),
    ("height not a multiple of 8", image(height=100), 400, "invalid_request", "params.height"),
    ("width below the model's limit", image(width=24), 400, "limit_exceeded", "params.width"),
    ("height above the model's limit", image(height=264), 400, "limit_exceeded", "params.height"),
    ("steps zero", image(num_inference_steps=0), 400, "invalid_request", "params.num_inference_steps"),
    ("steps above the model's limit", image(num_inference_steps=51), 400, "limit_exceeded", "params.num_inference_steps"),
    ("guidance negative", image(guidance_scale=-1.0), 400, "invalid_request", "params.guidance_scale"),
    ("guidance NaN", image(guidance_scale=NAN), 400, "invalid_request", "params.guidance_scale"),
    ("negative_prompt a number", image(negative_prompt=3), 400, "invalid_request", "params.negative_prompt"),
    ("width on an unconditional model", {"model": UNCOND, "prompts": ["x"], "params": {"width": 64}}, 400, "invalid_request", "params.width"),
    # A webhook URL the schema refuses is a 400; a well-formed one the deployment will not
    # call is a 403 (its policy) or a 409 (no signing secret yet): not the client's mistake.
    ("webhook not http", webhook("ftp://example.com/x"), 400, "invalid_request", "webhook.url"),
    ("webhook without a host", webhook("http:///x"), 400, "invalid_request", "webhook.url"),
    ("webhook port out of range", webhook("http://example.com:65536/x"), 400, "invalid_request", "webhook.url"),
    ("webhook unbalanced IPv6", webhook("http://[::1/x"), 400, "invalid_request", "webhook.url"),
    ("webhook to loopback", webhook("http://127.0.0.1:8000/x"), 403, "forbidden", "webhook.url"),
    ("webhook to IPv6 loopback", webhook("http://[::1]/x"), 403, "forbidden", "webhook.url"),
    ("webhook to localhost", webhook("HTTP://localhost/x"), 403, "forbidden", "webhook.url"),
    ("webhook to cloud metadata", webhook("http://169.254.169.254/latest"), 403, "forbidden", "webhook.url"),
    ("webhook without a secret", webhook("HTTP://0"), 409, "conflict", "webhook"),
    ("body an array", [1, 2], 400, "invalid_request", None),
    ("body a string", "jobs", 400, "invalid_request", None),
]


def job_count(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.query(Job).count()


@pytest.mark.parametrize("name,body,status,code,field", CASES, ids=[c[0] for c in CASES])
def test_refused(client, settings, redis_server, name, body, status, code, field):
    response = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json")
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert error["message"] and "Traceback" not in error["message"]
    assert job_count(settings) == 0
    assert redis_server.client().dbsize() == 0 or redis_server.client().llen(f"model.{TEXT}") == 0


RAW_CASES = [
    ("malformed JSON", "{not json", "application/json", 400, "invalid_request"),
    ("empty body", "", "application/json", 400, "invalid_request"),
    ("not JSON content type", "model=tiny-text", "application/x-www-form-urlencoded", 400, "invalid_request"),
    ("oversized body", "x" * (16 * 1024 * 1024 + 1), "application/json", 413, "request_entity_too_large"),
]


@pytest.mark.parametrize("name,data,content_type,status,code", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_refused_raw(client, settings, name, data, content_type, status, code):
    response = client.post("/v1/jobs", data=data, content_type=content_type)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert job_count(settings) == 0


KEY_CASES = [
    ("no header", {}),
    ("empty bearer", {"Authorization": "Bearer "}),
    ("wrong scheme", {"Authorization": "Basic dXNlcjpwYXNz"}),
    ("unknown key", {"Authorization": "Bearer gq_deadbeef_notakey"}),
    ("malformed", {"Authorization": "gq_deadbeef"}),
]


@pytest.mark.parametrize("name,headers", KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_bad_keys_get_one_and_the_same_401(app, settings, name, headers):
    response = app.test_client().post("/v1/jobs", json={"model": TEXT, "prompts": ["a"]}, headers=headers)
    assert response.status_code == 401
    assert response.get_json() == {"error": {"code": "unauthorized", "field": None,
                                             "message": "a valid API key is required: Authorization: Bearer <key>"}}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert job_count(settings) == 0


def test_table_size():
    assert len(CASES) + len(RAW_CASES) + len(KEY_CASES) >= 40


@pytest.mark.parametrize("query,message", [
    ("limit=abc", "limit: Input should be a valid integer, unable to parse string as an integer"),
    ("limit=0", "limit: Input should be greater than or equal to 1"),
    ("limit=1001", "limit: Input should be less than or equal to 1000"),
    ("state=bogus", "state: Input should be 'queued', 'running',"),
])
def test_query_strings_are_checked_like_bodies(client, query, message):
    response = client.get(f"/v1/jobs?{query}")
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["code"] == "invalid_request"
    assert error["field"] == query.split("=")[0]
    assert error["message"].startswith(message)


def test_the_document_refuses_what_the_parameter_validators_refuse():
    """A refusal made in a model validator is stated in the OpenAPI document too (its
    `not` clauses), so a client that validates against the document is never surprised."""
    schemas = build_document()["components"]["schemas"]
    text_params = Draft202012Validator({**schemas["TextParams"], "$defs": schemas})
    for name, body, *_ in CASES:
        if name in ("n and its other name", "max_new_tokens and max_length"):
            assert not text_params.is_valid(body["params"]), name
    assert text_params.is_valid({"n": 2, "num_return_sequences": None, "max_length": 20})
