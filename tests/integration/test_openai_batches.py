"""The OpenAI Batch API as a user of the `openai` package meets it: real HTTP to a web
process, real Celery worker and reconciler processes, on SQLite and PostgreSQL, with the
SDK validating every response strictly against its own models."""
from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import openai
import pytest
import yaml
from openai.types import Completion, ImagesResponse
from openai.types.chat import ChatCompletion
from PIL import Image

from tests.helpers.database import BACKENDS
from tests.helpers.openai_batches import chat_line, completion_line, jsonl, registry_with_chat_model
from tests.helpers.stacks import running_stack

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def openai_models_file(tmp_path_factory, tiny_model_dirs):
    root = tmp_path_factory.mktemp("openai-registry")
    path = registry_with_chat_model(root, tiny_model_dirs)
    entries = yaml.safe_load(path.read_text())
    entries["models"]["fault"] = {"task": "text-generation", "source": str(root), "micro_batch_size": 4,
                                  "runner": "tests.fault_runner:FaultRunner",
                                  "options": {"journal": str(root / "journal.tsv"), "slow_seconds": 0.3}}
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, tmp_path_factory, redis_server, openai_models_file):
    root = tmp_path_factory.mktemp(f"openai-{request.param}")
    with running_stack(request.param, root, redis_server, openai_models_file, env={"PYTHONPATH": str(REPO_ROOT)},
                       worker_max_models=4, slice_max_items=16, reconcile_interval_seconds=0.5) as stack:
        stack.start_reconciler()
        yield stack


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, _strict_response_validation=True)


def run_batch(client, lines: list, endpoint: str = "/v1/completions"):
    file = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": 7200})
    assert file.purpose == "batch" and file.expires_at == file.created_at + 7200
    return client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h",
                                 metadata={"suite": "integration"})


def wait_until_terminal(client, batch_id: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def lines_of(client, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    return {line["custom_id"]: line for line in map(json.loads, client.files.content(file_id).text.splitlines())}


def test_a_completions_batch_runs_to_output_and_error_files(client, stack):
    prompts = {f"r{i}": f"The worker claims {i}" for i in range(5)}
    lines = [completion_line(cid, prompt, seed=40 + i) for i, (cid, prompt) in enumerate(prompts.items())]
    lines += [completion_line("two", "Open the file", n=2, seed=7, stop="e"),
              {**completion_line("ok", ""), "body": {"model": "fault", "prompt": "ok fine", "max_tokens": 4}},
              {**completion_line("boom", ""), "body": {"model": "fault", "prompt": "raise now", "max_tokens": 4}}]
    batch = run_batch(client, lines)
    assert batch.status == "in_progress" and batch.request_counts.total == 8 and batch.model is None
    done = wait_until_terminal(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": 8, "completed": 7, "failed": 1}
    assert done.completed_at >= done.finalizing_at >= done.in_progress_at and done.metadata == {"suite": "integration"}
    output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert set(output) == set(prompts) | {"two", "ok"} and set(errors) == {"boom"}
    assert errors["boom"]["response"]["status_code"] == 500
    assert "injected failure" in errors["boom"]["response"]["body"]["error"]["message"]
    two = Completion.model_validate(output["two"]["response"]["body"], strict=True)
    assert [choice.index for choice in two.choices] == [0, 1] and all("e" not in c.text for c in two.choices)
    # A batch line is a genq job item: the same prompt, seed and parameters give the same text.
    native = stack.submit({"model": "tiny-text", "inputs": [{"prompt": prompts["r3"], "seed": 43}],
                           "params": {"max_new_tokens": 8}})
    assert stack.wait_terminal(native)["state"] == "succeeded"
    r3 = Completion.model_validate(output["r3"]["response"]["body"], strict=True)
    assert r3.choices[0].text == stack.items(native)[0]["output"]["text"] and r3.usage.prompt_tokens > 0
    jobs = stack.get("/v1/jobs").json()["jobs"]
    assert {job["model"] for job in jobs} >= {"tiny-text", "fault"}
    with pytest.raises(openai.BadRequestError) as refused:  # a 400, which the SDK does not retry
        client.batches.cancel(done.id)
    assert refused.value.code == "batch_not_cancellable"


def test_the_sdk_lists_the_models_a_batch_may_name(client, openai_models_file):
    names = set(yaml.safe_load(openai_models_file.read_text())["models"])
    models = list(client.models.list())
    assert {model.id for model in models} == names and {model.owned_by for model in models} == {"genq"}


def test_a_completion_prompt_may_be_a_list(client):
    """Each prompt of the list gets its n choices, numbered as OpenAI numbers them (choice
    i * n + j is sample j of prompt i), each the text that prompt gives alone."""
    prompts = ["The worker claims", "Open the file"]
    lines = [completion_line("list", prompts, n=2, seed=11, temperature=0),
             completion_line("first", prompts[0], n=2, seed=11, temperature=0),
             completion_line("second", prompts[1], n=2, seed=11, temperature=0)]
    done = wait_until_terminal(client, run_batch(client, lines).id)
    assert done.status == "completed" and done.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    output = {custom_id: Completion.model_validate(line["response"]["body"], strict=True)
              for custom_id, line in lines_of(client, done.output_file_id).items()}
    listed, first, second = output["list"], output["first"], output["second"]
    assert [choice.index for choice in listed.choices] == [0, 1, 2, 3]
    assert [choice.text for choice in listed.choices] == [c.text for c in first.choices + second.choices]
    assert listed.usage.prompt_tokens == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert listed.usage.completion_tokens == first.usage.completion_tokens + second.usage.completion_tokens


def test_a_chat_batch_and_an_image_batch(client):
    chat = run_batch(client, [chat_line("c1", "hello there", seed=1), chat_line("c2", "and you", n=2)],
                     "/v1/chat/completions")
    image_line = {"custom_id": "i1", "method": "POST", "url": "/v1/images/generations",
                  "body": {"model": "tiny-sd", "prompt": "a red square", "n": 2, "size": "64x32"}}
    images = run_batch(client, [image_line], "/v1/images/generations")
    chat_done, images_done = wait_until_terminal(client, chat.id), wait_until_terminal(client, images.id)
    assert (chat_done.status, images_done.status) == ("completed", "completed")
    for line in lines_of(client, chat_done.output_file_id).values():
        body = ChatCompletion.model_validate(line["response"]["body"], strict=True)
        assert body.choices[0].message.role == "assistant" and body.usage.total_tokens > 0
    body = ImagesResponse.model_validate(lines_of(client, images_done.output_file_id)["i1"]["response"]["body"])
    pngs = [Image.open(io.BytesIO(base64.b64decode(image.b64_json))) for image in body.data]
    assert [png.format for png in pngs] == ["PNG", "PNG"] and {png.size for png in pngs} == {(64, 32)}


def test_cancel_while_running_keeps_what_finished(client):
    lines = [{**completion_line(f"s{i}", ""), "body": {"model": "fault", "prompt": f"slow {i}", "max_tokens": 4}}
             for i in range(40)]
    batch = run_batch(client, lines)
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_until_terminal(client, batch.id, timeout=120)
    assert done.status == "cancelled" and done.cancelled_at
    counts = done.request_counts
    assert counts.completed > 0 and counts.failed > 0 and counts.completed + counts.failed == 40
    output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert len(output) == counts.completed and set(output) | set(errors) == {f"s{i}" for i in range(40)}
    assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}
    assert client.batches.cancel(batch.id).status == "cancelled"  # cancelling again answers it again


def test_a_bad_file_fails_the_batch(client):
    batch = run_batch(client, [completion_line("a", "The"), "{oops", completion_line("a", "again"),
                               completion_line("b", "x", max_tokens=129)])
    assert batch.status == "failed" and batch.failed_at
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [
        (2, "invalid_json_line", None), (3, "duplicate_custom_id", "custom_id"), (4, "limit_exceeded", "body.max_tokens")]
    assert client.batches.retrieve(batch.id).status == "failed"


def test_list_batches_and_files_a_page_at_a_time(client):
    created = [run_batch(client, [completion_line("a", "The")]).id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    seen = [batch.id for batch in client.batches.list(limit=2)]  # the SDK follows `after` itself
    assert seen[:3] == created[::-1] and len(seen) == len(set(seen))
    files = [file.id for file in client.files.list(limit=2, purpose="batch")]
    assert len(files) == len(set(files)) >= 3
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 32)
