"""schemathesis over the whole API, against the live Flask app (WSGI, no server), with a
real database and a real Redis: stateless checks on generated requests, valid and
invalid, for every operation of the document.

The schema is loaded from `build_document()` at import (the document does not depend on
the app, and `test_openapi` checks that /openapi.json serves exactly it), so each
operation is its own pytest test. (`schemathesis.pytest.from_fixture` would load it from
the app, but it fails on pytest >= 9.2, which dropped `Node._nodeid`.)

Random ids only ever find nothing, so hooks point part of the generated requests at real
things: a few real jobs (with succeeded, failed and pending text and image items, and a
cancelled job), and the registered models. Then 202s, 200s, outputs, cancel and retry
are exercised too.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, Response
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.ledger import Ledger
from shared.orm import JobState
from tests.web.test_openapi import finish_some_items
from web.openapi import build_document

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MAX_EXAMPLES = 60  # per operation in the fuzzing phase; the examples and coverage phases add their own
PHASES = ["examples", "coverage", "fuzzing"]
MODELS = ["tiny-text", "tiny-sd", "tiny-uncond"]  # the registry of tests/tiny_models.py
REAL_JOBS: list[str] = []  # the current test's real jobs, for the hook below
REAL_IDS: dict[str, list[str]] = {"file_id": [], "batch_id": []}  # and its real OpenAI files and batches
STREAM_SECONDS = 1.0  # an event stream is read this long (it may never end), then cut


@dataclass(frozen=True)
class KnownFailure:
    """A finding in code this suite does not fix. Its failures are dropped from the run (so
    anything else still fails it) and a strict xfail test at the end pins it: that test
    fails once the finding is fixed, and then this entry goes too."""

    operations: tuple[str, ...]
    matches: Callable[[Case, Response], bool]

    def covers(self, case: Case, response: Response) -> bool:
        return case.operation.label in self.operations and self.matches(case, response)




KNOWN_FAILURES: list[KnownFailure] = []  # findings fixed so far: an empty state filter; NUL in text, ids, cursors and keys


def load_schema():
    schema = schemathesis.openapi.from_dict(build_document(), config=schemathesis.Config())
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        deterministic=True,
        database="none",
        # The key comes from a fixture and goes with every request; 401s are tested in test_openapi.
        with_security_parameters=False,
    )
    schema.config.phases.update(phases=PHASES)
    return schema


schema = load_schema()


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Half the time, a real job (and an index it may hold), file or batch instead of a generated id."""
    for name, real_ids in REAL_IDS.items():
        if real_ids and isinstance((path_parameters or {}).get(name), str):
            return st.one_of(st.just(path_parameters),
                             st.sampled_from(list(real_ids)).map(lambda id_: {**path_parameters, name: id_}))
    if not REAL_JOBS or not isinstance((path_parameters or {}).get("job_id"), str):
        return st.just(path_parameters)
    real = st.sampled_from(list(REAL_JOBS)).map(lambda job_id: {**path_parameters, "job_id": job_id})
    if "index" in path_parameters:
        real = real.flatmap(lambda params: st.integers(0, 3).map(lambda index: {**params, "index": index}))
    return st.one_of(st.just(path_parameters), real)


@schema.hook
def flatmap_body(context, body):
    """Half the time, a registered model instead of a generated name, so submits can succeed.
    Only a name the schema allows is replaced: a too long one may be what makes a body invalid."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not 1 <= len(body["model"]) <= 128:
        return st.just(body)
    return st.one_of(st.just(body), st.sampled_from(MODELS).map(lambda model: {**body, "model": model}))


@schema.hook
def filter_failure(context, failure, case, response):
    return not any(known.covers(case, response) for known in KNOWN_FAILURES)


@pytest.fixture
def app_settings(settings):
    """Event streams send a keep-alive (and re-read the ledger) often, so a stream that
    is cut after STREAM_SECONDS is not left waiting for its next chunk."""
    return settings.model_copy(update={"events_heartbeat_seconds": 0.2})


@pytest.fixture
def real_openai_ids(client):
    """A file and a batch made from it (in progress: its job waits for a worker)."""
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "tiny-text", "prompt": "x"}}'
    file_id = client.post("/v1/files", content_type="multipart/form-data",
                          data={"purpose": "batch", "file": (io.BytesIO(line + b"\n"), "in.jsonl")}).get_json()["id"]
    batch = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions",
                                             "completion_window": "24h"}).get_json()
    REAL_IDS.update(file_id=[file_id], batch_id=[batch["id"]])
    yield REAL_IDS
    REAL_IDS.update(file_id=[], batch_id=[])


@pytest.fixture
def real_jobs(client, settings):
    """A running text job and a running image job with a succeeded, a failed and a pending
    item each, a failed job (retry takes it) and a cancelled one."""
    def submit(model: str, prompts: list[str], priority: int = 5) -> str:
        body = {"model": model, "prompts": prompts, "priority": priority}
        return client.post("/v1/jobs", json=body).get_json()["id"]

    text, image = submit("tiny-text", ["a", "b", "c"]), submit("tiny-sd", ["x", "y", "z"])
    failed, cancelled = submit("tiny-text", ["p", "q"], priority=9), submit("tiny-uncond", ["u"])
    finish_some_items(settings, failed)  # claimed first: the highest priority
    finish_some_items(settings, text)
    finish_some_items(settings, image, image=True)
    assert Ledger(settings.database_url).settle(failed) == JobState.FAILED
    assert client.post(f"/v1/jobs/{cancelled}/cancel").status_code == 200
    REAL_JOBS[:] = [text, image, failed, cancelled]
    yield REAL_JOBS
    REAL_JOBS.clear()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_the_api_keeps_its_contract(case, app, api_key, real_jobs, real_openai_ids):
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {api_key}"}, checks=CHECKS,
                           timeout=STREAM_SECONDS)


# Findings schemathesis made, each pinned as the behaviour the document promises.



def test_an_empty_state_filter_is_refused(client):
    response = client.get("/v1/jobs?state=")
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "state"


def test_a_nul_in_a_prompt_is_refused(client):
    response = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a\x00b"]})
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "prompts.0"


def test_a_nul_in_an_idempotency_key_is_refused(client):
    response = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"]}, headers={"Idempotency-Key": "k\x00"})
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "Idempotency-Key"


def test_a_cursor_with_a_nul_is_refused(client):
    cursor = base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|a\x00").decode().rstrip("=")
    response = client.get(f"/v1/jobs?cursor={cursor}")
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "cursor"


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/jobs/a%00b"), ("GET", "/v1/jobs/a%00b/items"), ("GET", "/v1/jobs/a%00b/items/0/output"),
    ("POST", "/v1/jobs/a%00b/cancel"), ("POST", "/v1/jobs/a%00b/retry"),
])
def test_a_job_id_with_a_nul_is_not_found(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
