"""The OpenAI-compatible Files and Batches API through the Flask app, with a real
database and Redis; the worker's part is done by hand through the ledger and the
reconciler's part by `advance_batches` (tests/integration/test_openai_batches.py runs
the real processes with the `openai` package)."""
from __future__ import annotations

import base64
import io
import json
from datetime import timedelta

import pytest
from openai.types import Batch, Completion, FileObject, ImagesResponse
from openai.types.chat import ChatCompletion
from PIL import Image
from tokenizers import Tokenizer

from shared.db import session_scope
from shared.openai_batches import advance_batches
from shared.openai_orm import OpenAIBatch, OpenAIBatchRequest
from shared.orm import JobItem, utcnow
from shared.storage import output_key, storage_from_settings
from tests.helpers.ledger import work_by_hand
from tests.helpers.openai_batches import chat_line, completion_line, jsonl, registry_with_chat_model
from tests.web.conftest import make_key
from tests.web.test_watching import scrape, value
from web.app import create_app
from web.openai_bodies import openai_param


@pytest.fixture
def openai_settings(settings, tmp_path, tiny_model_dirs):
    return settings.model_copy(update={"models_file": registry_with_chat_model(tmp_path / "registry", tiny_model_dirs)})


@pytest.fixture
def app_settings(openai_settings):
    return openai_settings


def upload(client, content: bytes, **form) -> dict:
    response = client.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(content), "in.jsonl"), **form},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    return FileObject.model_validate(response.get_json(), strict=True).model_dump()


def create(client, lines: list, endpoint: str = "/v1/completions", **extra) -> dict:
    file = upload(client, jsonl(lines))
    response = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": endpoint,
                                                "completion_window": "24h", **extra})
    assert response.status_code == 200, response.get_json()
    return Batch.model_validate(response.get_json(), strict=True).model_dump()


def content_lines(client, file_id: str) -> dict[str, dict]:
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200
    return {line["custom_id"]: line for line in map(json.loads, response.get_data().splitlines())}


def test_upload_list_read_and_delete_a_file(client, openai_settings):
    content = jsonl([completion_line("a", "The quick"), completion_line("b", "Open the")])
    file = upload(client, content, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"})
    assert file["bytes"] == len(content) and file["purpose"] == "batch" and file["status"] == "processed"
    assert file["filename"] == "in.jsonl" and file["expires_at"] - file["created_at"] == 3600
    assert client.get(f"/v1/files/{file['id']}").get_json() == file
    assert client.get(f"/v1/files/{file['id']}/content").get_data() == content
    listed = client.get("/v1/files?purpose=batch").get_json()
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]] == [file["id"]]
    other = make_key(openai_settings, "other")
    assert client.get(f"/v1/files/{file['id']}", headers={"Authorization": f"Bearer {other}"}).status_code == 404
    assert client.delete(f"/v1/files/{file['id']}").get_json() == {"id": file["id"], "object": "file", "deleted": True}
    missing = client.get(f"/v1/files/{file['id']}")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == {"message": f"no file {file['id']!r}", "type": "invalid_request_error",
                                           "param": "file_id", "code": "not_found"}


@pytest.mark.parametrize("form,param", [
    ({"purpose": "fine-tune"}, "purpose"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "last_used", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
])
def test_a_refused_upload_names_the_field(client, form, param):
    data = {"purpose": "batch", "file": (io.BytesIO(b"{}\n"), "x.jsonl"), **form}
    response = client.post("/v1/files", data=data, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["error"]["param"] == param


def test_an_upload_larger_than_the_file_limit_is_413(settings, redis_server, api_key, tmp_path, tiny_model_dirs):
    small = settings.model_copy(update={"file_max_bytes": 2048})
    client = create_app(small).test_client()
    response = client.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(b"x" * 4096), "big.jsonl")},
                           content_type="multipart/form-data", headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 413 and response.get_json()["error"]["type"] == "invalid_request_error"


def test_a_batch_is_genq_jobs_with_n_consecutive_seeds(client, openai_settings):
    batch = create(client, [completion_line("a", "The quick", n=2, seed=5), completion_line("b", "Open the"),
                            completion_line("c", "Rain in", temperature=0.7)], metadata={"project": "x"})
    assert batch["status"] == "in_progress" and batch["model"] == "tiny-text" and batch["metadata"] == {"project": "x"}
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    jobs = client.get("/v1/jobs").get_json()["jobs"]
    assert len(jobs) == 3  # (n=2), (n=1, defaults), (n=1, temperature 0.7): a job has one parameter set
    with session_scope(openai_settings.database_url) as session:
        request = session.query(OpenAIBatchRequest).filter_by(custom_id="a").one()
        seeds = [item.seed for item in session.query(JobItem).filter_by(job_id=request.job_id).order_by(JobItem.index)]
        sampled = session.query(OpenAIBatchRequest).filter_by(custom_id="c").one().job_id
    assert request.n == 2 and seeds == [5, 6]
    assert next(j for j in jobs if j["id"] == sampled)["params"]["temperature"] == 0.7

    admin = {"Authorization": f"Bearer {make_key(openai_settings, 'ops', admin=True)}"}
    families = scrape(client, headers=admin)  # the batch's jobs count as submitted, like POST /v1/jobs's
    assert value(families, "genq_jobs_submitted_total", model="tiny-text") == 3
    assert value(families, "genq_items_submitted_total", model="tiny-text") == 4


def test_a_list_of_prompts_is_n_items_per_prompt_in_one_request(client, openai_settings):
    batch = create(client, [completion_line("l", ["The quick", "Open the", "Rain in"], n=2, seed=5),
                            completion_line("s", "Sun in", n=6, seed=1)])
    assert batch["request_counts"]["total"] == 2
    assert len(client.get("/v1/jobs").get_json()["jobs"]) == 1  # 6 items per request, one parameter set: one job
    with session_scope(openai_settings.database_url) as session:
        request = session.query(OpenAIBatchRequest).filter_by(custom_id="l").one()
        items = [(item.prompt, item.seed) for item in session.query(JobItem).filter_by(job_id=request.job_id)
                 .order_by(JobItem.index).limit(6)]
    assert request.n == 6 and request.first_index == 0 and request.shaping["per_prompt"] == 2
    assert items == [("The quick", 5), ("The quick", 6), ("Open the", 5), ("Open the", 6), ("Rain in", 5),
                     ("Rain in", 6)]


@pytest.mark.parametrize("prompt,n,code,param", [
    ([], 1, "invalid_request", "body.prompt"),
    ([1, 2], 1, "invalid_request", "body.prompt"),  # token arrays: not supported
    (["a", 3], 1, "invalid_request", "body.prompt"),
    (["a"] * 30, 2, "limit_exceeded", "body.prompt"),
    (["a", "y" * 5000], 1, "limit_exceeded", "body.prompt"),
])
def test_a_refused_list_of_prompts_names_the_field(client, openai_settings, prompt, n, code, param):
    limited = openai_settings.model_copy(update={"max_items_per_job": 50})
    client = create_app(limited).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_key(limited, 'tests')}"
    batch = create(client, [completion_line("l", prompt, n=n)])
    error = batch["errors"]["data"][0]
    assert batch["status"] == "failed" and (error["code"], error["param"]) == (code, param), error


def test_a_bad_file_fails_the_batch_naming_each_line(client, openai_settings):
    batch = create(client, [
        completion_line("a", "The quick"),
        "{not json",
        completion_line("a", "again"),
        completion_line("d", "x", url="/v1/chat/completions"),
        {**completion_line("e", "x"), "body": {"model": "nope", "prompt": "x"}},
        completion_line("f", "x", max_tokens=129),
        completion_line("g", "x", temperature="hot"),
        completion_line("h", "y" * 5000),
        completion_line("i", "x", seed=-1),
    ])
    assert batch["status"] == "failed" and batch["failed_at"] and batch["request_counts"]["total"] == 9
    errors = [(e["line"], e["code"], e["param"]) for e in batch["errors"]["data"]]
    assert errors == [(2, "invalid_json_line", None), (3, "duplicate_custom_id", "custom_id"),
                      (4, "mismatched_url", "url"), (5, "model_not_found", "body.model"),
                      (6, "limit_exceeded", "body.max_tokens"), (7, "invalid_request", "body.temperature"),
                      (8, "limit_exceeded", "body.prompt"), (9, "invalid_request", "body.seed")]
    assert "body.max_tokens is 129" in batch["errors"]["data"][4]["message"]
    assert client.get("/v1/jobs").get_json()["jobs"] == []  # nothing runs


def test_chat_needs_a_chat_template(client):
    refused = create(client, [chat_line("a", "hi", model="tiny-text")], endpoint="/v1/chat/completions")
    assert [(e["code"], e["param"]) for e in refused["errors"]["data"]] == [
        ("model_has_no_chat_template", "body.model")]
    bad_turns = {**chat_line("a", "hi"), "body": {"model": "tiny-chat", "messages": [
        {"role": "assistant", "content": "hello"}]}}
    refused = create(client, [bad_turns], endpoint="/v1/chat/completions")
    assert "cannot start with the assistant" in refused["errors"]["data"][0]["message"]
    accepted = create(client, [chat_line("a", "hi")], endpoint="/v1/chat/completions")
    assert accepted["status"] == "in_progress"
    job = client.get("/v1/jobs").get_json()["jobs"][0]
    assert client.get(f"/v1/jobs/{job['id']}/items").get_json()["items"][0]["prompt"] == (
        "<|endoftext|>user: hi\nassistant:")


def test_a_finished_batch_has_output_and_error_files(client, openai_settings):
    batch = create(client, [completion_line("a", "The quick", n=2, seed=1, stop="STOP"),
                            completion_line("b", "Open the", n=2, seed=9), completion_line("c", "Rain in", n=2)])
    work_by_hand(openai_settings.database_url, "tiny-text",
                 ["fox STOP jumps", "dog", "file", RuntimeError("out of memory"), "sun", "wind"])
    running = client.get(f"/v1/batches/{batch['id']}").get_json()
    assert running["status"] == "in_progress"  # until the reconciler's next pass
    assert running["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert advance_batches(openai_settings, storage_from_settings(openai_settings))["batches_finalized"] == 1
    done = Batch.model_validate(client.get(f"/v1/batches/{batch['id']}").get_json(), strict=True)
    assert done.status == "completed" and done.completed_at and done.finalizing_at
    assert done.request_counts.model_dump() == {"total": 3, "completed": 2, "failed": 1}
    assert done.usage.output_tokens > 0 and done.usage.input_tokens > 0
    output = content_lines(client, done.output_file_id)
    assert set(output) == {"a", "c"}
    body = Completion.model_validate(output["a"]["response"]["body"], strict=True)
    assert [c.text for c in body.choices] == ["fox ", "dog"] and body.choices[0].finish_reason == "stop"
    assert output["a"]["response"]["status_code"] == 200 and output["a"]["error"] is None
    errors = content_lines(client, done.error_file_id)
    assert set(errors) == {"b"} and errors["b"]["response"]["status_code"] == 500
    assert "out of memory" in errors["b"]["response"]["body"]["error"]["message"]
    files = {f["id"]: f for f in client.get("/v1/files?purpose=batch_output").get_json()["data"]}
    assert set(files) == {done.output_file_id, done.error_file_id}
    assert files[done.output_file_id]["bytes"] == len(client.get(f"/v1/files/{done.output_file_id}/content").get_data())
    refused = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "batch_not_cancellable"


def test_a_chat_batch_answers_chat_completions(client, openai_settings, tiny_model_dirs):
    batch = create(client, [chat_line("q", "hi", n=2)], endpoint="/v1/chat/completions")
    work_by_hand(openai_settings.database_url, "tiny-chat", ["hello", "hey"])
    advance_batches(openai_settings, storage_from_settings(openai_settings))
    done = client.get(f"/v1/batches/{batch['id']}").get_json()
    body = ChatCompletion.model_validate(content_lines(client, done["output_file_id"])["q"]["response"]["body"])
    assert body.object == "chat.completion" and [c.message.content for c in body.choices] == ["hello", "hey"]
    tokenizer = Tokenizer.from_file(str(tiny_model_dirs["text"] / "tokenizer.json"))
    tokens = [len(tokenizer.encode(text, add_special_tokens=False).ids) for text in ("hello", "hey")]
    assert body.usage.completion_tokens == sum(tokens) and body.choices[1].index == 1
    assert body.usage.total_tokens == body.usage.prompt_tokens + sum(tokens) and body.usage.prompt_tokens > 0


def test_an_image_batch_answers_b64_pngs(client, openai_settings):
    line = {"custom_id": "img", "method": "POST", "url": "/v1/images/generations",
            "body": {"model": "tiny-sd", "prompt": "a red square", "size": "64x32", "n": 2, "seed": 3}}
    batch = create(client, [line], endpoint="/v1/images/generations")
    job = client.get("/v1/jobs").get_json()["jobs"][0]
    assert (job["params"]["width"], job["params"]["height"]) == (64, 32)
    storage = storage_from_settings(openai_settings)
    for index, colour in enumerate(("red", "blue")):
        png = io.BytesIO()
        Image.new("RGB", (64, 32), colour).save(png, format="PNG")
        storage.put(output_key(job["id"], index, "png"), png.getvalue())
    work_by_hand(openai_settings.database_url, "tiny-sd",
                 [{"key": output_key(job["id"], i, "png")} for i in range(2)])
    advance_batches(openai_settings, storage)
    done = client.get(f"/v1/batches/{batch['id']}").get_json()
    body = ImagesResponse.model_validate(content_lines(client, done["output_file_id"])["img"]["response"]["body"])
    images = [Image.open(io.BytesIO(base64.b64decode(image.b64_json))) for image in body.data]
    assert [image.size for image in images] == [(64, 32)] * 2 and images[0].getpixel((0, 0)) == (255, 0, 0)


def test_cancel_stops_the_jobs_and_the_error_file_names_what_never_ran(client, openai_settings):
    batch = create(client, [completion_line("a", "x"), completion_line("b", "y")],
                   output_expires_after={"anchor": "created_at", "seconds": 3600})
    cancelling = client.post(f"/v1/batches/{batch['id']}/cancel").get_json()
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"]
    assert client.get("/v1/jobs").get_json()["jobs"][0]["state"] == "cancelled"
    assert client.post(f"/v1/batches/{batch['id']}/cancel").get_json()["status"] == "cancelling"
    advance_batches(openai_settings, storage_from_settings(openai_settings))
    done = Batch.model_validate(client.get(f"/v1/batches/{batch['id']}").get_json(), strict=True)
    assert done.status == "cancelled" and done.cancelled_at and done.output_file_id is None
    errors = content_lines(client, done.error_file_id)
    assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"} and len(errors) == 2
    error_file = client.get(f"/v1/files/{done.error_file_id}").get_json()
    assert error_file["purpose"] == "batch_output" and error_file["expires_at"] - error_file["created_at"] == 3600


def test_batches_list_a_page_at_a_time_and_stay_in_their_tenant(client, openai_settings):
    ids = [create(client, [completion_line("a", "x")])["id"] for _ in range(3)]
    first = client.get("/v1/batches?limit=2").get_json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert first["first_id"] == ids[2] and first["last_id"] == ids[1]
    rest = client.get(f"/v1/batches?limit=2&after={first['last_id']}").get_json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False
    other = {"Authorization": f"Bearer {make_key(openai_settings, 'other')}"}
    assert client.get("/v1/batches", headers=other).get_json()["data"] == []
    assert client.get(f"/v1/batches/{ids[0]}", headers=other).status_code == 404
    assert client.post(f"/v1/batches/{ids[0]}/cancel", headers=other).status_code == 404


@pytest.mark.parametrize("body,param", [
    ({"endpoint": "/v1/embeddings"}, "endpoint"),
    ({"completion_window": "1h"}, "completion_window"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"input_file_id": "file-" + "0" * 32}, "file_id"),
])
def test_a_refused_batch_request_names_the_field(client, body, param):
    file = upload(client, jsonl([completion_line("a", "x")]))
    response = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/completions",
                                                "completion_window": "24h", **body})
    assert response.status_code in (400, 404) and response.get_json()["error"]["param"] == param


def test_hostile_lines_fail_the_batch_and_never_the_server(client):
    file = upload(client, b"\n".join([
        b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000, b'{"custom_id": "x\\ud800", "method": "POST"}',
        b'"just a string"', b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": []}',
        b'{"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"model": "tiny-text", '
        b'"prompt": "x", "n": 1000000000}}',
        b'{"custom_id": "c", "method": "GET", "url": "/v1/completions", "body": {}}', b"   ",
    ]) + b"\n")
    response = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/completions",
                                                "completion_window": "24h"})
    assert response.status_code == 200
    batch = Batch.model_validate(response.get_json(), strict=True)
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [
        (1, "invalid_json_line", None), (2, "invalid_json_line", None), (3, "invalid_json_line", None),
        (4, "invalid_json_line", None), (5, "invalid_request", "body"), (6, "limit_exceeded", "body.n"),
        (7, "invalid_request", "method")]
    assert batch.request_counts.total == 7  # the blank line is not a request


def test_a_batch_past_its_window_expires_keeping_what_finished(client, openai_settings):
    batch = create(client, [completion_line("a", "x"), completion_line("b", "y")])
    work_by_hand(openai_settings.database_url, "tiny-text", ["done"], settle=False)
    with session_scope(openai_settings.database_url) as session:
        row = session.get(OpenAIBatch, batch["id"])
        row.expires_at = utcnow() - timedelta(seconds=1)
    report = advance_batches(openai_settings, storage_from_settings(openai_settings))
    assert report["batches_expired"] == 1 and report["batches_finalized"] == 1
    done = Batch.model_validate(client.get(f"/v1/batches/{batch['id']}").get_json(), strict=True)
    assert done.status == "expired" and done.expired_at
    assert done.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
    assert set(content_lines(client, done.output_file_id)) == {"a"}
    assert content_lines(client, done.error_file_id)["b"]["error"]["code"] == "batch_expired"


@pytest.mark.parametrize("genq_field,endpoint,body,param", [
    ("params.max_new_tokens", "/v1/completions", {}, "body.max_tokens"),
    ("params.max_new_tokens", "/v1/chat/completions", {"max_completion_tokens": 5}, "body.max_completion_tokens"),
    ("params.width", "/v1/images/generations", {}, "body.size"),
    ("params.temperature", "/v1/completions", {}, "body.temperature"),
    ("inputs.0.prompt", "/v1/chat/completions", {}, "body.messages"),
    ("inputs.1.seed", "/v1/completions", {}, "body.seed"),
    ("inputs", "/v1/completions", {}, "body.n"),
    ("model", "/v1/completions", {}, "body.model"),
    (None, "/v1/completions", {}, None),
])
def test_genq_fields_are_named_as_openai_parameters(genq_field, endpoint, body, param):
    assert openai_param(genq_field, endpoint, body) == param


def test_a_file_reads_back_byte_for_byte(client):
    content = b'{"a": 1}\r\n{"b": "\xc3\xbc"}\n\n{"c": 3}'  # CRLF, a blank line, no final line end
    file = upload(client, content)
    assert file["bytes"] == len(content) and client.get(f"/v1/files/{file['id']}/content").get_data() == content


def test_a_batch_larger_than_a_job_is_several_jobs(openai_settings, redis_server, api_key):
    small = openai_settings.model_copy(update={"max_items_per_job": 4})
    client = create_app(small).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    batch = create(client, [completion_line(f"r{i}", "x", n=2) for i in range(5)])
    assert batch["status"] == "in_progress" and batch["request_counts"]["total"] == 5
    assert sorted(job["counts"]["total"] for job in client.get("/v1/jobs").get_json()["jobs"]) == [2, 4, 4]
    refused = create(client, [completion_line("big", "x", n=5)])
    assert [(e["code"], e["param"]) for e in refused["errors"]["data"]] == [("limit_exceeded", "body.n")]


def test_without_a_key_the_sdk_reads_a_401_in_its_envelope(client):
    response = client.get("/v1/batches", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}
