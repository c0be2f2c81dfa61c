"""`n` samples per prompt, the primer's GPT-2 parameters and a GAN's latent walk, over
HTTP through a real web server, Redis and Celery worker process."""
from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from tests import tiny_models
from tests.helpers.database import BACKENDS
from tests.helpers.stacks import running_stack
from tests.worker.test_generator_runner import save_random_gan

pytestmark = pytest.mark.integration

PROMPTS = ["Once upon a time", "The quick brown fox", "def add(a, b):"]
# The primer's call, plus the options this project adds, and n=4 as num_return_sequences.
PRIMER = {"max_length": 30, "do_sample": True, "top_k": 50, "top_p": 0.95, "num_return_sequences": 4,
          "repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "stop": ["."], "seed": 2024}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, tmp_path_factory, redis_server, tiny_model_dirs):
    root = tmp_path_factory.mktemp(f"samples-{request.param}")
    entries = tiny_models.tiny_registry_entries(tiny_model_dirs["text"], tiny_model_dirs["uncond"], tiny_model_dirs["sd"])
    entries["models"]["tiny-gan"] = {"task": "gan-image", "source": str(save_random_gan(root / "gan")),
                                     "micro_batch_size": 4, "defaults": {"width": 32, "height": 32}}
    models_file = root / "models.yaml"
    models_file.write_text(yaml.safe_dump(entries))
    with running_stack(request.param, root, redis_server, models_file, worker_max_models=4, slice_max_items=5) as stack:
        yield stack


def test_a_text_job_with_n_4_and_the_primers_parameters(stack):
    job_id = stack.submit({"model": "tiny-text", "prompts": PROMPTS, "params": PRIMER})
    job = stack.wait_terminal(job_id)
    assert job["state"] == "succeeded", job
    assert job["counts"]["total"] == 12 and job["params"]["n"] == 4 and job["params"]["max_new_tokens"] is None
    items = stack.items(job_id)
    assert [(i["prompt_index"], i["sample"], i["prompt"]) for i in items] == [
        (p, s, prompt) for p, prompt in enumerate(PROMPTS) for s in range(4)]
    assert [i["seed"] for i in items] == list(range(2024, 2024 + 12))
    assert all("." not in i["output"]["text"] for i in items)
    assert len({i["output"]["text"] for i in items[:4]}) > 1  # four different samples of one prompt
    # Each sample is what its prompt and seed give alone (a job of one item, other micro-batches).
    params = {k: v for k, v in PRIMER.items() if k not in ("seed", "num_return_sequences")}
    for item in (items[1], items[10]):
        alone = stack.submit({"model": "tiny-text", "inputs": [{"prompt": item["prompt"], "seed": item["seed"]}],
                              "params": params})
        assert stack.wait_terminal(alone)["state"] == "succeeded"
        assert stack.items(alone)[0]["output"] == item["output"]


def png(stack, job_id: str, index: int) -> np.ndarray:
    response = stack.get(f"/v1/jobs/{job_id}/items/{index}/output")
    assert response.headers["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("L")).astype(np.int16)


def test_a_gan_latent_walk_and_n_samples(stack):
    walk = stack.submit({"model": "tiny-gan", "prompts": ["a 4", "seven"],
                         "params": {"interpolate": {"from_seed": 8, "to_seed": 9, "steps": 6}}})
    samples = stack.submit({"model": "tiny-gan", "prompts": ["a 4", "seven"], "params": {"n": 2, "seed": 8}})
    assert stack.wait_terminal(walk)["state"] == "succeeded"
    assert stack.wait_terminal(samples)["state"] == "succeeded"
    steps = stack.items(walk)
    assert [(i["prompt_index"], i["sample"]) for i in steps] == [(p, s) for p in range(2) for s in range(6)]
    assert png(stack, walk, 0).shape == (32, 32)
    assert np.abs(png(stack, walk, 0) - png(stack, samples, 0)).max() <= 1  # step 0 is from_seed's image
    assert np.abs(png(stack, walk, 5) - png(stack, samples, 1)).max() <= 1  # the last step is to_seed's
    assert len({png(stack, walk, i).tobytes() for i in range(6)}) == 6


def test_a_prompt_that_names_no_digit_fails_alone(stack):
    job_id = stack.submit({"model": "tiny-gan", "prompts": ["a 3", "a cat", "nine"], "params": {"seed": 1}})
    job = stack.wait_terminal(job_id)
    assert job["state"] == "failed" and job["counts"]["succeeded"] == 2 and job["counts"]["failed"] == 1
    assert "names no class" in stack.items(job_id)[1]["error"]
