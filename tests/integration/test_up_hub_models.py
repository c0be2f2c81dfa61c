"""`genq up` with registry entries named by Hugging Face id whose weights are not in the
local cache: it starts all the same (its self-check takes a model that has weights), says
which models lack them, /v1/models marks them unavailable and a job for one is refused.
Weights copied into the cache afterwards are served by id, offline, without a restart."""
from __future__ import annotations

import pytest
import requests
import yaml

from genq.devstack import free_port
from tests import tiny_models
from tests.helpers.hub_cache import save_to_hub_cache
from tests.helpers.up import UpProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def up(tmp_path, tiny_model_dirs):
    entries = tiny_models.tiny_registry_entries(tiny_model_dirs["text"], tiny_model_dirs["uncond"], tiny_model_dirs["sd"])
    entries["models"]["gpt2"] = {"task": "text-generation", "source": "openai-community/gpt2",
                                 "defaults": {"max_new_tokens": 4}}
    entries["models"]["sd-turbo"] = {"task": "text-to-image", "source": "stabilityai/sd-turbo"}
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump(entries))
    process = UpProcess(tmp_path / "var", models_file, free_port(), HF_HUB_CACHE=str(tmp_path / "hub"),
                        HF_HUB_OFFLINE="1")
    yield process
    if process.process.poll() is None:
        process.stop()
    for leftover in process.leftovers():
        leftover.kill()


def test_genq_up_starts_without_hub_weights_and_serves_them_once_they_are_copied_in(up, tmp_path, tiny_model_dirs):
    up.wait_up()
    assert "self-check: tiny-text answered" in up.output()  # not gpt2, the first text model by name
    assert "without weights here: gpt2, sd-turbo; see genq models list" in up.output()
    models = {m["name"]: m for m in requests.get(f"{up.url}/v1/models", headers=up.headers(), timeout=10).json()["models"]}
    assert (models["gpt2"]["available"], models["sd-turbo"]["available"], models["tiny-text"]["available"]) == \
        (False, False, True)
    listed = up.genq("models", "list")
    assert listed.returncode == 0
    assert "hf download openai-community/gpt2" in listed.stdout and "hf download stabilityai/sd-turbo" in listed.stdout
    refused = up.genq("submit", "--model", "gpt2", "--prompt", "x")
    assert refused.returncode != 0 and "model 'gpt2' is not available" in refused.stderr

    save_to_hub_cache(tiny_model_dirs["text"], "openai-community/gpt2", tmp_path / "hub")
    served = up.genq("submit", "--model", "gpt2", "--prompt", "hello", "--wait")
    assert served.returncode == 0, served.stderr
    results = up.genq("results", served.stdout.strip(), "--out", str(tmp_path / "out"))
    assert results.returncode == 0, results.stderr
    assert '"state": "succeeded"' in (tmp_path / "out" / "results.jsonl").read_text()
    assert "ready   openai-community/gpt2" in up.genq("models", "list").stdout
