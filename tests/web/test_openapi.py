"""The OpenAPI document and the /docs page: the document is valid OpenAPI 3.1, names
exactly the app's routes, and real responses (including ones schemathesis cannot reach,
such as finished items with outputs) conform both to the response models and to the
document."""
from __future__ import annotations

import io
import json
import re

import jsonschema
import pytest
from openai.types import Batch as SdkBatch
from openai.types import FileObject as SdkFile
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from pydantic import BaseModel, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from shared.db import session_scope
from shared.orm import Job as JobRow
from shared.storage import output_key, storage_from_settings
from tests.helpers.ledger import work_by_hand
from web.app import create_app
from web.docs import SECURITY_HEADERS
from web.openai_batches import BatchList, BatchObject
from web.openai_common import OpenAIErrorResponse
from web.openai_files import FileDeleted, FileList, FileObject
from web.openapi import build_document, operations
from web.operations import openapi_path
from web.request_models import JobRequest
from web.response_models import (
    ErrorResponse,
    HealthResponse,
    ItemPageResponse,
    JobAcceptedResponse,
    JobListResponse,
    JobResponse,
    JobStatusResponse,
    ModelListResponse,
    ReadinessResponse,
)

DOCUMENTED_BLUEPRINTS = ("api", "removal", "events", "webhooks", "openai_files", "openai_batches", "health")
TEXT_JOB = {"model": "tiny-text", "prompts": ["a", "b", "c"], "params": {"seed": 3}}


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def test_the_document_is_valid_openapi_3_1(document, registry, settings):
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)
    validate(build_document(), cls=OpenAPIV31SpecValidator)  # the generic one, before a deployment's limits
    assert document == build_document(registry, settings)


def test_every_bound_is_a_json_schema_keyword(document):
    """pydantic writes `ge`/`le` as they are when it cannot turn them into `minimum`/`maximum`
    (a bound behind a validator): no generator or validator would enforce those."""
    text = json.dumps(document)
    assert not re.search(r'"(ge|le|gt|lt)": ', text), re.findall(r'.{80}"(?:ge|le|gt|lt)": .{20}', text)[:3]


def test_the_served_document_declares_this_deployments_limits(document, settings):
    jobs = document["paths"]["/v1/jobs"]
    assert {p["name"]: p["schema"].get("maximum") for p in jobs["get"]["parameters"]}["limit"] == settings.max_page_size
    branches = document["components"]["schemas"]["JobRequest"]["anyOf"]
    assert sorted({b["properties"]["model"]["const"] for b in branches}) == ["tiny-sd", "tiny-text", "tiny-uncond"]
    text_params = document["components"]["schemas"]["TextParams_tiny-text"]["properties"]
    assert text_params["max_new_tokens"]["maximum"] == 128  # the registry's limit, not the task's 4096
    assert set(jobs["post"]["responses"]["202"]["links"]) == {"GetJob", "ListItems", "CancelJob", "RetryJob"}


def test_every_route_is_documented_and_every_documented_route_exists(app, document):
    served = {
        (method, openapi_path(rule.rule), rule.endpoint)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[0] in DOCUMENTED_BLUEPRINTS
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    table = {(op.method, op.path, op.endpoint) for op in operations()}
    assert served == table
    in_document = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert in_document == {(method, path) for method, path, _ in served}


def test_v1_needs_a_key_and_the_probes_do_not(document):
    for path, item in document["paths"].items():
        for op in item.values():
            secured = path.startswith("/v1/")
            assert bool(op["security"]) == secured, path
            assert ("401" in op["responses"]) == secured, path


def test_params_are_described_by_the_parameter_models(generic_document):
    document = generic_document
    params = document["components"]["schemas"]["JobRequest"]["properties"]["params"]
    names = [sub["$ref"].rsplit("/", 1)[1] for sub in params["anyOf"]]
    assert names == ["TextParams", "ImageParams", "UnconditionalImageParams", "GeneratorImageParams"]
    assert all(name in document["components"]["schemas"] for name in names)


def document_registry(document: dict) -> Registry:
    """The document as a JSON Schema resource, so `urn:genq#/components/...` resolves."""
    return Registry().with_resource("urn:genq", DRAFT202012.create_resource(document))


def component_validator(document: dict, name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"urn:genq#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=document_registry(document))


class Conformance:
    """Checks a real response against a response model and against the document."""

    def __init__(self, document: dict):
        self.document = document
        self.registry = document_registry(document)

    def schema_for(self, method: str, path: str, status: int) -> dict:
        content = self.document["paths"][path][method.lower()]["responses"][str(status)]["content"]
        return content["application/json"]["schema"]

    def check(self, response, model: type[BaseModel], method: str, path: str) -> dict:
        body = response.get_json()
        model.model_validate_json(response.data, strict=True)
        schema = {**self.schema_for(method, path, response.status_code)}
        schema["$ref"] = "urn:genq" + schema["$ref"]
        validator = jsonschema.Draft202012Validator(
            schema, registry=self.registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        validator.validate(body)
        return body


@pytest.fixture
def conform(document):
    return Conformance(document)


def finish_some_items(settings, job_id: str, *, image: bool = False) -> None:
    """Item 0 succeeds (text, or a PNG in storage), item 1 fails; the rest stay pending."""
    with session_scope(settings.database_url) as session:
        model = session.get(JobRow, job_id).model
    first = "hello"
    if image:
        first = {"key": output_key(job_id, 0, "png")}
        storage_from_settings(settings).put(first["key"], b"\x89PNG\r\n\x1a\n")
    work_by_hand(settings.database_url, model, [first, RuntimeError("boom")], settle=False)


def test_job_responses_conform(client, settings, conform):
    accepted = client.post("/v1/jobs", json=TEXT_JOB)
    job_id = conform.check(accepted, JobAcceptedResponse, "POST", "/v1/jobs")["id"]
    finish_some_items(settings, job_id)
    conform.check(client.get(f"/v1/jobs/{job_id}"), JobStatusResponse, "GET", "/v1/jobs/{job_id}")
    conform.check(client.get("/v1/jobs?limit=1"), JobListResponse, "GET", "/v1/jobs")
    page = conform.check(client.get(f"/v1/jobs/{job_id}/items?limit=2"), ItemPageResponse, "GET", "/v1/jobs/{job_id}/items")
    assert page["items"][0]["output"] == {"text": "hello"} and page["items"][1]["error"] == "boom"
    assert page["next_offset"] == 2
    cancelled = conform.check(client.post(f"/v1/jobs/{job_id}/cancel"), JobResponse, "POST", "/v1/jobs/{job_id}/cancel")
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"]
    retried = client.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202
    conform.check(retried, JobResponse, "POST", "/v1/jobs/{job_id}/retry")


def test_image_items_conform(client, settings, conform):
    job_id = client.post("/v1/jobs", json={"model": "tiny-sd", "prompts": ["x", "y"]}).get_json()["id"]
    finish_some_items(settings, job_id, image=True)
    page = conform.check(client.get(f"/v1/jobs/{job_id}/items"), ItemPageResponse, "GET", "/v1/jobs/{job_id}/items")
    url = page["items"][0]["output"]["image_url"]
    assert client.get(url).mimetype == "image/png"
    assert url in {f"/v1/jobs/{job_id}/items/0/output"}


def test_models_and_probes_conform(client, conform):
    conform.check(client.get("/v1/models"), ModelListResponse, "GET", "/v1/models")
    conform.check(client.get("/healthz"), HealthResponse, "GET", "/healthz")
    conform.check(client.get("/readyz"), ReadinessResponse, "GET", "/readyz")


ERRORS = [
    ("POST", "/v1/jobs", "/v1/jobs", {"json": {"model": "nope", "prompts": ["a"]}}, 400),
    ("GET", "/v1/jobs", "/v1/jobs?limit=0", {}, 400),
    ("GET", "/v1/jobs/{job_id}", "/v1/jobs/nope", {}, 404),
    ("GET", "/v1/jobs/{job_id}/items", "/v1/jobs/nope/items", {}, 404),
    ("GET", "/v1/jobs/{job_id}/items/{index}/output", "/v1/jobs/nope/items/0/output", {}, 404),
    ("POST", "/v1/jobs/{job_id}/cancel", "/v1/jobs/nope/cancel", {}, 404),
    ("POST", "/v1/jobs/{job_id}/retry", "/v1/jobs/nope/retry", {}, 404),
]


@pytest.mark.parametrize("method,template,url,kwargs,status", ERRORS)
def test_errors_conform(client, conform, method, template, url, kwargs, status):
    response = client.open(url, method=method, **kwargs)
    assert response.status_code == status
    conform.check(response, ErrorResponse, method, template)


def test_a_missing_key_is_a_documented_401(app, conform):
    response = app.test_client().get("/v1/jobs")
    assert response.status_code == 401
    conform.check(response, ErrorResponse, "GET", "/v1/jobs")


def test_too_many_requests_is_a_documented_429(settings, api_key, conform):
    app = create_app(settings.model_copy(update={"rate_limit": "2/minute"}))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    responses = [client.get("/v1/models") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    conform.check(responses[-1], ErrorResponse, "GET", "/v1/models")
    assert responses[-1].headers["Retry-After"]


def test_a_full_queue_is_a_documented_429(settings, api_key, conform):
    app = create_app(settings.model_copy(update={"max_pending_items_per_tenant": 2}))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    response = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a", "b", "c"]})
    assert response.status_code == 429 and response.headers["Retry-After"]
    conform.check(response, ErrorResponse, "POST", "/v1/jobs")


def test_the_models_catch_a_missing_or_an_extra_field(client):
    body = client.get(f"/v1/jobs/{client.post('/v1/jobs', json=TEXT_JOB).get_json()['id']}").get_json()
    JobStatusResponse.model_validate_json(json.dumps(body), strict=True)
    for name in body:
        with pytest.raises(ValidationError):
            JobStatusResponse.model_validate_json(json.dumps({k: v for k, v in body.items() if k != name}), strict=True)
    with pytest.raises(ValidationError):
        JobStatusResponse.model_validate_json(json.dumps({**body, "surprise": 1}), strict=True)
    with pytest.raises(ValidationError):
        JobStatusResponse.model_validate_json(json.dumps({**body, "progress": "0"}), strict=True)


def test_the_request_examples_are_valid_requests(document):
    post = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    validator = component_validator(document, "JobRequest")
    for example in post["examples"].values():
        JobRequest.model_validate(example["value"])
        validator.validate(example["value"])


@pytest.fixture
def generic_document():
    """The document before a deployment's registry and settings narrow it."""
    return build_document()


def test_the_document_says_what_the_model_validator_checks(generic_document, document):
    deployed = component_validator(document, "JobRequest")
    assert deployed.is_valid({"model": "tiny-text", "inputs": [{"prompt": "a"}], "prompts": None, "params": {"seed": 1}})
    assert not deployed.is_valid({"model": "tiny-text", "prompts": ["a"], "params": {"width": 64}})  # not its task's
    assert not deployed.is_valid({"model": "tiny-text", "prompts": ["a"], "params": {"max_new_tokens": 129}})
    assert not deployed.is_valid({"model": "m", "prompts": ["a"]})
    validator = component_validator(generic_document, "JobRequest")
    assert validator.is_valid({"model": "m", "prompts": ["a"], "params": {}})
    assert validator.is_valid({"model": "m", "inputs": [{"prompt": "a"}], "prompts": None, "params": {"seed": 1}})
    assert not validator.is_valid({"model": "m"})
    assert not validator.is_valid({"model": "m", "prompts": ["a"], "inputs": [{"prompt": "a"}]})
    assert not validator.is_valid({"model": "m", "prompts": []})


def test_the_docs_page(client, document):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self';")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    page = response.get_data(as_text=True)
    for path, item in document["paths"].items():
        assert path in page
        for op in item.values():
            assert f'id="op-{op["operationId"]}"' in page
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert "curl -X POST" in page and "Authorization: Bearer $GENQ_API_KEY" in page


def test_the_docs_page_loads_nothing_from_elsewhere(client):
    page = client.get("/docs").get_data(as_text=True)
    assert "<script" not in page and "<style" not in page and " style=" not in page
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert assets and all(url.startswith("/") for url in assets), assets
    for url in assets:
        response = client.get(url)
        assert response.status_code == 200 and response.headers["X-Content-Type-Options"] == "nosniff", url


def test_openai_responses_conform(client, conform):
    """The OpenAI routes' bodies conform to the document, and to the SDK's own models."""
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "tiny-text", "prompt": "x"}}
    uploaded = client.post("/v1/files", content_type="multipart/form-data", data={
        "purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "3600",
        "file": (io.BytesIO(json.dumps(line).encode() + b"\n"), "in.jsonl")})
    file = conform.check(uploaded, FileObject, "POST", "/v1/files")
    SdkFile.model_validate(file, strict=True)
    conform.check(client.get("/v1/files?limit=1&order=asc"), FileList, "GET", "/v1/files")
    conform.check(client.get(f"/v1/files/{file['id']}"), FileObject, "GET", "/v1/files/{file_id}")
    content = client.get(f"/v1/files/{file['id']}/content")
    assert content.mimetype in conform.document["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"][
        "content"]
    body = {"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
    batch = conform.check(client.post("/v1/batches", json=body), BatchObject, "POST", "/v1/batches")
    SdkBatch.model_validate(batch, strict=True)
    conform.check(client.get("/v1/batches"), BatchList, "GET", "/v1/batches")
    conform.check(client.get(f"/v1/batches/{batch['id']}"), BatchObject, "GET", "/v1/batches/{batch_id}")
    conform.check(client.post(f"/v1/batches/{batch['id']}/cancel"), BatchObject, "POST", "/v1/batches/{batch_id}/cancel")
    for method, template, url, status in [
        ("GET", "/v1/files/{file_id}", "/v1/files/file-nope", 404),
        ("GET", "/v1/batches", "/v1/batches?after=batch_nope", 404),
        ("GET", "/v1/batches", "/v1/batches?limit=0", 400),
        ("POST", "/v1/files", "/v1/files", 400),
        ("POST", "/v1/batches/{batch_id}/cancel", "/v1/batches/batch_nope/cancel", 404),
    ]:
        response = client.open(url, method=method)
        assert response.status_code == status, (url, response.get_json())
        conform.check(response, OpenAIErrorResponse, method, template)
    conform.check(client.delete(f"/v1/files/{file['id']}"), FileDeleted, "DELETE", "/v1/files/{file_id}")


def sse_events(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            events.append(fields)
    return events


def test_an_event_stream_conforms(client, settings, document):
    """Each event of a finished job's stream is one the document describes: its `data`
    conforms to the component the event's branch names."""
    job_id = client.post("/v1/jobs", json=TEXT_JOB).get_json()["id"]
    finish_some_items(settings, job_id)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    response = client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = sse_events(response.get_data(as_text=True))
    assert [event["event"] for event in events] == ["item"] * 3 + ["progress", "cancelled"]  # succeeded, failed, cancelled
    schema = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert schema == document["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    for event in events:
        branch = next(b for b in schema["schema"]["oneOf"] if event["event"] in b["properties"]["event"]["enum"])
        jsonschema.Draft202012Validator(branch).validate(event)
        name = branch["properties"]["data"]["contentSchema"]["$ref"].rsplit("/", 1)[1]
        component_validator(document, name).validate(json.loads(event["data"]))
