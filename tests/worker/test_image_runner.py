"""ImageRunner on a tiny Stable Diffusion and a tiny DDIM pipeline.

Item alone vs. item in a batch is compared with a tolerance of 1 in 255 per pixel:
the UNet's batched convolutions give tiny float differences between batch
sizes, and rounding to 8 bits turns a few of them into a difference of 1.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.worker.conftest import PIXEL_TOLERANCE, StopAfter, png_pixels
from worker.runners.base import Cancelled, ItemInput

PROMPTS = ["a red cat", "blue sky over the city at night", "", "a small green house with a tree and a river"]
SD_PARAMS = {"num_inference_steps": 4, "guidance_scale": 5.0, "width": 64, "height": 64}
UNCOND_PARAMS = {"num_inference_steps": 4}


def items(seed_base: int = 7) -> list[ItemInput]:
    return [ItemInput(index, prompt, seed_base + index) for index, prompt in enumerate(PROMPTS)]


def pixels(runner, batch, params, **kwargs) -> list[np.ndarray]:
    outputs = runner.predict(batch, params, **kwargs)
    assert len(outputs) == len(batch) and all(o.text is None for o in outputs)
    return [png_pixels(o.image_png) for o in outputs]


def assert_batch_equals_alone(runner, params):
    batched = pixels(runner, items(), params)
    for item, in_batch in zip(items(), batched):
        by_itself = pixels(runner, [item], params)[0]
        assert np.abs(by_itself - in_batch).max() <= PIXEL_TOLERANCE, f"item {item.index}"


# -- text to image ---------------------------------------------------------------


def test_sd_images_have_the_requested_size(sd_runner):
    assert all(image.shape == (64, 64, 3) for image in pixels(sd_runner, items(), SD_PARAMS))
    wide = pixels(sd_runner, items()[:2], {**SD_PARAMS, "width": 96, "height": 32})
    assert all(image.shape == (32, 96, 3) for image in wide)


def test_sd_same_seed_gives_identical_bytes(sd_runner):
    first = sd_runner.predict(items(), SD_PARAMS)
    second = sd_runner.predict(items(), SD_PARAMS)
    assert [o.image_png for o in first] == [o.image_png for o in second]


def test_sd_item_alone_equals_item_in_batch(sd_runner):
    assert_batch_equals_alone(sd_runner, SD_PARAMS)


def test_sd_seed_and_prompt_change_the_image(sd_runner):
    base = pixels(sd_runner, items(7), SD_PARAMS)
    reseeded = pixels(sd_runner, items(900), SD_PARAMS)
    assert all(np.abs(a - b).max() > 10 for a, b in zip(base, reseeded))
    other_prompt = pixels(sd_runner, [ItemInput(0, "a dog on a mountain", 7)], SD_PARAMS)[0]
    assert np.abs(other_prompt - base[0]).max() > 0


def test_sd_negative_prompt_is_used(sd_runner):
    plain = pixels(sd_runner, items()[:2], SD_PARAMS)
    negative = pixels(sd_runner, items()[:2], {**SD_PARAMS, "negative_prompt": "blue painting"})
    assert any(np.abs(a - b).max() > 0 for a, b in zip(plain, negative))


def test_sd_cancel_before_start(sd_runner):
    with pytest.raises(Cancelled):
        sd_runner.predict(items(), SD_PARAMS, should_stop=lambda: True)


def test_sd_cancel_mid_run_then_runner_still_works(sd_runner):
    stop = StopAfter(3)  # 1 check before the call, then one per step: stops after step 2 of 4
    with pytest.raises(Cancelled):
        sd_runner.predict(items(), SD_PARAMS, should_stop=stop)
    assert stop.calls == 3
    assert pixels(sd_runner, items()[:1], SD_PARAMS, should_stop=lambda: False)[0].shape == (64, 64, 3)


# -- unconditional -----------------------------------------------------------------


def test_uncond_images_have_the_model_size(uncond_runner):
    size = uncond_runner.pipe.unet.config.sample_size
    assert all(image.shape == (size, size, 3) for image in pixels(uncond_runner, items(), UNCOND_PARAMS))


def test_uncond_same_seed_gives_identical_bytes_and_ignores_prompts(uncond_runner):
    first = uncond_runner.predict(items(), UNCOND_PARAMS)
    reprompted = [ItemInput(item.index, "something else", item.seed) for item in items()]
    second = uncond_runner.predict(reprompted, UNCOND_PARAMS)
    assert [o.image_png for o in first] == [o.image_png for o in second]


def test_uncond_item_alone_equals_item_in_batch(uncond_runner):
    assert_batch_equals_alone(uncond_runner, UNCOND_PARAMS)


def test_uncond_seeds_differ(uncond_runner):
    images = pixels(uncond_runner, items(), UNCOND_PARAMS)
    assert all(np.abs(images[0] - other).max() > 10 for other in images[1:])


def test_uncond_cancel_mid_run_then_runner_still_works(uncond_runner):
    stop = StopAfter(3)
    with pytest.raises(Cancelled):
        uncond_runner.predict(items(), UNCOND_PARAMS, should_stop=stop)
    assert stop.calls == 3
    assert "progress_bar" not in vars(uncond_runner.pipe), "the stop-checking bar is removed again"
    assert len(uncond_runner.predict(items()[:1], UNCOND_PARAMS)) == 1


def test_empty_input_list(uncond_runner):
    assert uncond_runner.predict([], UNCOND_PARAMS) == []
