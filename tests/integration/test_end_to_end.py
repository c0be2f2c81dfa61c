"""Submit over HTTP -> Redis -> a real Celery worker process -> results in the database
-> poll, on SQLite and PostgreSQL."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers.database import BACKENDS
from tests.helpers.stacks import running_stack
from tests.worker.conftest import PIXEL_TOLERANCE, png_pixels

pytestmark = pytest.mark.integration

PROMPTS = [f"prompt number {i} says" + " more" * (i % 7) for i in range(50)]
SAMPLING = {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 12, "seed": 1234}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, tmp_path_factory, redis_server, models_file):
    root = tmp_path_factory.mktemp(f"stack-{request.param}")
    with running_stack(request.param, root, redis_server, models_file, worker_max_models=4, slice_max_items=16) as stack:
        yield stack


@pytest.fixture(scope="module")
def text_job(stack):
    job_id = stack.submit({"model": "tiny-text", "prompts": PROMPTS, "params": SAMPLING})
    return stack.wait_terminal(job_id), stack.items(job_id)


def test_a_sampled_text_batch_completes(text_job):
    job, items = text_job
    assert job["state"] == "succeeded", job
    assert job["counts"]["succeeded"] == 50 and job["progress"] == 1.0
    assert job["started_at"] and job["finished_at"]
    assert [i["index"] for i in items] == list(range(50))
    assert all(isinstance(i["output"]["text"], str) for i in items)
    assert len({i["output"]["text"] for i in items}) > 1


def test_same_seeds_give_the_same_texts(stack, text_job):
    _, first = text_job
    again = stack.submit({"model": "tiny-text", "prompts": PROMPTS, "params": SAMPLING})
    assert stack.wait_terminal(again)["state"] == "succeeded"
    assert [i["output"] for i in stack.items(again)] == [i["output"] for i in first]


def test_an_item_alone_gives_the_same_text_as_in_the_batch(stack, text_job):
    _, items = text_job
    for item in (items[3], items[41]):
        params = {k: v for k, v in SAMPLING.items() if k != "seed"}
        alone = stack.submit({"model": "tiny-text", "inputs": [{"prompt": item["prompt"], "seed": item["seed"]}], "params": params})
        assert stack.wait_terminal(alone)["state"] == "succeeded"
        assert stack.items(alone)[0]["output"] == item["output"]


def test_raw_text_output(stack, text_job):
    job, items = text_job
    response = stack.get(f"/v1/jobs/{job['id']}/items/7/output")
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == items[7]["output"]["text"]


@pytest.mark.parametrize("model,params,size", [
    ("tiny-sd", {"width": 64, "height": 32, "num_inference_steps": 3, "seed": 5}, (64, 32)),
    ("tiny-uncond", {"num_inference_steps": 3, "seed": 5}, None),
])
def test_an_image_batch_gives_decodable_pngs(stack, model, params, size):
    job_id = stack.submit({"model": model, "prompts": ["a red square", "a blue circle", "green", "night"], "params": params})
    job = stack.wait_terminal(job_id)
    assert job["state"] == "succeeded", job
    images = []
    for item in stack.items(job_id):
        response = stack.get(item["output"]["image_url"])
        assert response.headers["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        image.load()
        images.append(image)
    assert len(images) == 4
    if size:
        assert {im.size for im in images} == {size}
    again = stack.submit({"model": model, "prompts": ["a red square"], "params": params})
    assert stack.wait_terminal(again)["state"] == "succeeded"
    alone = png_pixels(stack.get(stack.items(again)[0]["output"]["image_url"]).content)
    in_batch = png_pixels(stack.get(stack.items(job_id)[0]["output"]["image_url"]).content)
    assert np.abs(alone - in_batch).max() <= PIXEL_TOLERANCE  # see tests/worker/conftest.py


def test_the_worker_loaded_each_model_once(stack, text_job):
    # Runs after the text jobs above: several jobs, one load.
    log = stack.processes["worker"].log()
    assert log.count("loaded model tiny-text") == 1, log[-3000:]


def test_cancel_a_running_job_keeps_finished_items(stack):
    job_id = stack.submit({"model": "tiny-text", "prompts": ["cancel me"] * 400,
                           "params": {"max_new_tokens": 64, "seed": 1}})
    from genq.devstack import wait_for
    wait_for(lambda: stack.get(f"/v1/jobs/{job_id}").json()["counts"]["succeeded"] > 0, 120, interval=0.05)
    assert stack.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = stack.wait_terminal(job_id, timeout=60)
    assert job["state"] == "cancelled"
    assert job["counts"]["succeeded"] > 0 and job["counts"]["cancelled"] > 0
    assert job["counts"]["succeeded"] + job["counts"]["cancelled"] == 400
