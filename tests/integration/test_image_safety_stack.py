"""Through the whole stack: an image that the model's safety checker flags is a failed
item with `nsfw_content_detected: ...` and no stored file (not a black PNG counted as a
success); the other items of the job succeed with their images."""
from __future__ import annotations

import pytest
import yaml

from shared.registry import load_registry
from tests.helpers.database import BACKENDS
from tests.helpers.safety_checker import build_checked_sd
from tests.helpers.stacks import running_stack
from tests.worker.conftest import png_pixels, ready_runner
from worker.runners.base import ItemInput

pytestmark = pytest.mark.integration

PARAMS = {"num_inference_steps": 3, "guidance_scale": 5.0, "width": 64, "height": 64}
PROMPTS = ["a red cat", "blue sky over the city at night", "a small green house", "a dog on a mountain"]
SEED, FLAGGED = 40, 1


@pytest.fixture(scope="module")
def checked_models_file(tmp_path_factory, tiny_model_dirs, models_file):
    entries = yaml.safe_load(models_file.read_text())
    plain = ready_runner(load_registry(models_file).get("tiny-sd"))
    inputs = [ItemInput(index, prompt, SEED + index) for index, prompt in enumerate(PROMPTS)]
    pngs = [output.image_png for output in plain.predict(inputs, PARAMS)]
    root = tmp_path_factory.mktemp("checked-stack")
    directory = build_checked_sd(tiny_model_dirs["sd"], root / "model", pngs, FLAGGED)
    entries["models"]["tiny-sd-checked"] = {**entries["models"]["tiny-sd"], "source": str(directory)}
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flagged_image_is_a_failed_item_with_the_flag(backend, tmp_path, redis_server, checked_models_file):
    with running_stack(backend, tmp_path, redis_server, checked_models_file) as stack:
        job_id = stack.submit({"model": "tiny-sd-checked", "prompts": PROMPTS, "params": {**PARAMS, "seed": SEED}})
        job = stack.wait_terminal(job_id, timeout=240)
        assert job["state"] == "failed", job  # finished with an item failed (its others kept)
        assert job["counts"]["succeeded"] == len(PROMPTS) - 1 and job["counts"]["failed"] == 1
        items = stack.items(job_id)
        flagged = items[FLAGGED]
        assert flagged["state"] == "failed"
        assert flagged["error"].startswith("nsfw_content_detected: ")
        for item in items:
            if item["index"] != FLAGGED:
                assert item["state"] == "succeeded"
                response = stack.get(f"/v1/jobs/{job_id}/items/{item['index']}/output")
                assert response.status_code == 200 and png_pixels(response.content).max() > 0
        assert stack.get(f"/v1/jobs/{job_id}/items/{FLAGGED}/output").status_code == 409  # nothing stored
        assert len(list(stack.storage_dir.rglob("*.png"))) == len(PROMPTS) - 1
