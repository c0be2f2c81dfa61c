"""A diffusers safety checker that flags an image fails that item with
`nsfw_content_detected: ...`; the other items of the micro-batch succeed with their
images (see tests/helpers/safety_checker.py for the tiny checker aimed at one image)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from shared.registry import load_registry
from tests.helpers.safety_checker import build_checked_sd
from tests.worker.conftest import png_pixels, ready_runner
from worker.batch_sizes import BatchSizes
from worker.batches import run_micro_batch
from worker.runners.base import ItemInput, ItemOutput
from worker.runners.image import ContentFlagged
from worker.slices import _error_text

PARAMS = {"num_inference_steps": 3, "guidance_scale": 5.0, "width": 64, "height": 64}
PROMPTS = ["a red cat", "blue sky over the city at night", "a small green house", "a dog on a mountain"]
FLAGGED = 2  # the item whose image the checker is aimed at


def batch() -> list[ItemInput]:
    return [ItemInput(index, prompt, 40 + index) for index, prompt in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def checked_spec(tmp_path_factory, tiny_model_dirs, tiny_registry, sd_runner):
    pngs = [output.image_png for output in sd_runner.predict(batch(), PARAMS)]
    root = tmp_path_factory.mktemp("checked-sd")
    directory = build_checked_sd(tiny_model_dirs["sd"], root / "model", pngs, FLAGGED)
    entry = {**tiny_registry.get("tiny-sd").model_dump(mode="json", exclude={"name"}, exclude_none=True),
             "source": str(directory)}
    (root / "models.yaml").write_text(yaml.safe_dump({"models": {"tiny-sd-checked": entry}}))
    return load_registry(root / "models.yaml").get("tiny-sd-checked")


@pytest.fixture(scope="module")
def checked_runner(checked_spec):
    runner = ready_runner(checked_spec)
    assert runner.pipe.safety_checker is not None, "the saved pipeline lost its safety checker"
    return runner


def test_a_flagged_image_fails_its_item_and_the_others_keep_theirs(checked_runner, sd_runner):
    outputs = checked_runner.predict(batch(), PARAMS)
    assert isinstance(outputs[FLAGGED], ContentFlagged)
    assert str(outputs[FLAGGED]).startswith("nsfw_content_detected: ")
    unchecked = sd_runner.predict(batch(), PARAMS)
    for index, (output, plain) in enumerate(zip(outputs, unchecked)):
        if index != FLAGGED:
            assert isinstance(output, ItemOutput)
            image = png_pixels(output.image_png)
            assert image.max() > 0, "a passed image is not blacked out"
            assert np.array_equal(image, png_pixels(plain.image_png)), "the checker changes nothing it passes"


def test_a_flagged_item_alone_fails_too(checked_runner):
    [alone] = checked_runner.predict([batch()[FLAGGED]], PARAMS)
    assert isinstance(alone, ContentFlagged)


def test_the_micro_batch_keeps_the_flag_as_that_items_error(checked_runner, checked_spec):
    """No rerun one by one (the batch did not fail), and the error the ledger stores is
    the flag's own text."""
    results = run_micro_batch(checked_runner, checked_spec, batch(), PARAMS, lambda: False, BatchSizes())
    outcomes = [outcome for _, outcome in results]
    assert [isinstance(o, ContentFlagged) for o in outcomes] == [i == FLAGGED for i in range(len(PROMPTS))]
    assert _error_text(outcomes[FLAGGED]).startswith("nsfw_content_detected: the model's safety checker flagged")
