"""Several items per prompt (`n`, its alias `num_return_sequences`, and latent walks) and
the primer's GPT-2 parameters, at the door: through the Flask app with a real database."""
from __future__ import annotations

import pytest
import yaml

from web.app import create_app


def submit(client, body: dict):
    return client.post("/v1/jobs", json=body)


def items_of(client, response) -> list[dict]:
    assert response.status_code == 202, response.get_json()
    return client.get(f"{response.headers['Location']}/items?limit=1000").get_json()["items"]


def positions(items: list[dict]) -> list[tuple]:
    return [(i["index"], i["prompt_index"], i["sample"], i["prompt"], i["seed"]) for i in items]


def test_n_makes_n_items_per_prompt_with_consecutive_seeds(client):
    response = submit(client, {"model": "tiny-text", "prompts": ["a", "b"], "params": {"n": 3, "seed": 10}})
    assert positions(items_of(client, response)) == [
        (0, 0, 0, "a", 10), (1, 0, 1, "a", 11), (2, 0, 2, "a", 12),
        (3, 1, 0, "b", 13), (4, 1, 1, "b", 14), (5, 1, 2, "b", 15),
    ]
    job = client.get(response.headers["Location"]).get_json()
    assert job["counts"]["total"] == 6 and job["params"]["n"] == 3 and "num_return_sequences" not in job["params"]


def test_an_input_seed_starts_its_prompts_samples(client):
    response = submit(client, {"model": "tiny-sd", "inputs": [{"prompt": "x", "seed": 7}, {"prompt": "y"}],
                               "params": {"n": 2, "width": 64, "height": 64}})
    found = items_of(client, response)
    assert positions(found)[:2] == [(0, 0, 0, "x", 7), (1, 0, 1, "x", 8)]
    assert [(i["prompt_index"], i["sample"]) for i in found[2:]] == [(1, 0), (1, 1)]
    assert found[3]["seed"] == found[2]["seed"] + 1


def test_num_return_sequences_is_an_alias_of_n(client):
    response = submit(client, {"model": "tiny-uncond", "prompts": ["x"], "params": {"num_return_sequences": 4}})
    assert [(i["prompt_index"], i["sample"]) for i in items_of(client, response)] == [(0, s) for s in range(4)]


def test_a_job_without_n_has_one_sample_per_prompt(client):
    response = submit(client, {"model": "tiny-text", "prompts": ["a", "b"]})
    assert [(i["prompt_index"], i["sample"]) for i in items_of(client, response)] == [(0, 0), (1, 0)]


def test_the_primers_parameters_are_accepted_as_written(client):
    params = {"max_length": 100, "do_sample": True, "top_k": 50, "top_p": 0.95, "num_return_sequences": 2,
              "repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "stop": "\n"}
    response = submit(client, {"model": "tiny-text", "prompts": ["Once upon a time"], "params": params})
    assert response.status_code == 202, response.get_json()
    stored = client.get(response.headers["Location"]).get_json()["params"]
    assert stored["max_length"] == 100 and stored["max_new_tokens"] is None  # the registry default gives way
    assert stored["stop"] == ["\n"] and stored["n"] == 2


@pytest.mark.parametrize(
    "params, field, code",
    [
        ({"n": 2, "num_return_sequences": 2}, "params", "invalid_request"),
        ({"max_new_tokens": 8, "max_length": 20}, "params", "invalid_request"),
        ({"n": 0}, "params.n", "invalid_request"),
        ({"n": 129}, "params.n", "invalid_request"),
        ({"stop": []}, "params.stop.list[constrained-str]", "invalid_request"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "params.stop.list[constrained-str]", "invalid_request"),
        ({"repetition_penalty": 0}, "params.repetition_penalty", "invalid_request"),
        ({"no_repeat_ngram_size": -1}, "params.no_repeat_ngram_size", "invalid_request"),
        ({"max_length": 0}, "params.max_length", "invalid_request"),
    ],
)
def test_bad_sampling_parameters_are_refused_naming_the_field(client, params, field, code):
    response = submit(client, {"model": "tiny-text", "prompts": ["a"], "params": params})
    assert response.status_code == 400
    body = response.get_json()["error"]
    assert body["code"] == code and body["field"] == field, body


def test_the_item_limit_counts_prompts_times_n(client, settings):
    limit = settings.max_items_per_job
    prompts = ["p"] * (limit // 4 + 1)
    response = submit(client, {"model": "tiny-text", "prompts": prompts, "params": {"n": 4}})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "limit_exceeded" and error["field"] == "prompts" and str(limit) in error["message"]
    assert submit(client, {"model": "tiny-text", "prompts": prompts[:-1], "params": {"n": 4}}).status_code == 202


@pytest.fixture
def gan_client(settings, models_file, tmp_path, api_key, redis_server):
    """The tiny registry plus a GAN entry (the web process never loads its weights: its
    directory only has to exist, or the model is unavailable)."""
    entries = yaml.safe_load(models_file.read_text())
    (tmp_path / "gan").mkdir()
    entries["models"]["tiny-gan"] = {"task": "gan-image", "source": str(tmp_path / "gan"),
                                     "defaults": {"width": 32, "height": 32}}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(entries))
    client = create_app(settings.model_copy(update={"models_file": path})).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    return client


def test_a_latent_walk_makes_one_item_per_step(gan_client):
    walk = {"from_seed": 3, "to_seed": 99, "steps": 5}
    response = submit(gan_client, {"model": "tiny-gan", "prompts": ["a 7", "a 1"], "params": {"interpolate": walk}})
    found = items_of(gan_client, response)
    assert [(i["prompt_index"], i["sample"], i["prompt"], i["seed"]) for i in found] == [
        (p, s, prompt, 3) for p, prompt in enumerate(["a 7", "a 1"]) for s in range(5)]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompts": ["a 7"], "params": {"interpolate": {"from_seed": 1, "to_seed": 2, "steps": 3}, "n": 2}}, "params"),
        ({"prompts": ["a 7"], "params": {"interpolate": {"from_seed": 1, "to_seed": 2, "steps": 1}}},
         "params.interpolate.steps"),
        ({"prompts": ["a 7"], "params": {"interpolate": {"from_seed": 1, "steps": 3}}}, "params.interpolate.to_seed"),
        ({"inputs": [{"prompt": "a 7", "seed": 4}], "params": {"interpolate": {"from_seed": 1, "to_seed": 2,
                                                                               "steps": 3}}}, "inputs.0.seed"),
        ({"prompts": ["a 7"], "params": {"num_inference_steps": 3}}, "params.num_inference_steps"),
    ],
)
def test_bad_latent_walks_are_refused(gan_client, body, field):
    response = submit(gan_client, {"model": "tiny-gan", **body})
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == field, response.get_json()
