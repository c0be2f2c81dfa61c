"""The demo models: a quick build, loaded back through the registry and the runners.

One quick build (a few training steps, some seconds) serves the whole module. The
models are barely trained, so these tests check the plumbing, not the quality.
"""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from shared.registry import load_registry
from tests.worker.conftest import StopAfter, png_pixels
from web.request_models import effective_params
from worker.demo import DIGIT_LABELS, build_demo_models, demo_registry_entries, read_quality
from worker.runners.base import Cancelled, ItemInput

IMAGE_STEPS = {"num_inference_steps": 4}


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo-models")
    lines: list[str] = []
    figures = build_demo_models(out_dir, quick=True, progress=lines.append)
    return out_dir, figures, lines


@pytest.fixture(scope="module")
def demo_registry(demo_build, tmp_path_factory):
    path = tmp_path_factory.mktemp("demo-registry") / "models.yaml"
    path.write_text(yaml.safe_dump(demo_registry_entries(demo_build[0])))
    return load_registry(path)


def ready_runner(spec):
    import torch

    from worker.runners import build_runner

    torch.set_num_threads(1)  # see tests/worker/conftest.py: faster on a shared 2-core machine
    runner = build_runner(spec, "cpu")
    runner.setup()
    return runner


@pytest.fixture(scope="module")
def text_runner(demo_registry):
    return ready_runner(demo_registry.get("demo-text"))


@pytest.fixture(scope="module")
def image_runner(demo_registry):
    return ready_runner(demo_registry.get("demo-image"))


def test_build_writes_both_models_and_their_quality(demo_build):
    out_dir, figures, lines = demo_build
    assert sorted(p.name for p in out_dir.iterdir()) == ["demo-dcgan", "demo-image", "demo-text", "demo-vae"]  # no .partial
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out_dir / "demo-text" / name).is_file()
    assert (out_dir / "demo-image" / "model_index.json").is_file()
    assert (out_dir / "demo-text" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    for name in ("demo-text", "demo-image"):
        assert read_quality(out_dir / name) == figures[name]
    text, image = figures["demo-text"], figures["demo-image"]
    assert text["heldout_perplexity"] > 1 and text["untrained_perplexity"] > 1 and text["steps"] >= 1
    assert 0 <= image["class_accuracy"] <= 1 and 0 <= image["noise_accuracy"] <= 1 and image["steps"] >= 1
    assert any(line.startswith("demo-text:") for line in lines)
    assert any(line.startswith("demo-image:") for line in lines)


def test_registry_entries_load_and_their_defaults_validate(demo_build, demo_registry):
    assert demo_registry.names() == ["demo-dcgan", "demo-image", "demo-text", "demo-vae"]
    for spec in demo_registry:
        assert spec.local_source() == demo_build[0] / spec.name
        effective_params(spec, {})  # the defaults pass the task's schema and the limits
    image = demo_registry.get("demo-image")
    assert image.options["labels"] == DIGIT_LABELS
    stored = effective_params(image, {})
    assert (stored["width"], stored["height"]) == (image.options["display_size"],) * 2


def test_demo_text_generates_for_each_prompt(text_runner, demo_registry):
    params = {**effective_params(demo_registry.get("demo-text"), {}), "max_new_tokens": 12}
    prompts = ["Return the", "This module provides", "Raise ValueError if"]
    outputs = text_runner.predict([ItemInput(i, p, 100 + i) for i, p in enumerate(prompts)], params)
    assert len(outputs) == 3
    assert all(isinstance(o.text, str) and o.image_png is None for o in outputs)
    assert any(o.text for o in outputs)


def image_params(demo_registry, **given):
    return effective_params(demo_registry.get("demo-image"), {**IMAGE_STEPS, **given})


def test_demo_image_draws_requested_digits_at_display_size(image_runner, demo_registry):
    outputs = image_runner.predict([ItemInput(0, "3", 1), ItemInput(1, "seven", 2)], image_params(demo_registry))
    assert [png_pixels(o.image_png).shape for o in outputs] == [(64, 64, 3)] * 2
    wide = image_runner.predict([ItemInput(0, "a 3", 1)], image_params(demo_registry, width=96, height=32))
    assert png_pixels(wide[0].image_png).shape == (32, 96, 3)


def test_demo_image_item_alone_equals_item_in_batch(image_runner, demo_registry):
    params = image_params(demo_registry)
    batch = [ItemInput(i, prompt, 40 + i) for i, prompt in enumerate(["one", "a handwritten 7", "Nine", "0"])]
    together = [png_pixels(o.image_png) for o in image_runner.predict(batch, params)]
    for item, in_batch in zip(batch, together):
        alone = png_pixels(image_runner.predict([item], params)[0].image_png)
        assert np.abs(alone - in_batch).max() <= 1, item


def test_prompt_naming_no_digit_is_refused(image_runner, demo_registry):
    # The worker reruns a failed micro-batch item by item, so only this item fails.
    params = image_params(demo_registry)
    with pytest.raises(ValueError, match="names no class; name one of: 0 \\(zero\\)"):
        image_runner.predict([ItemInput(0, "a handwritten digit", 1)], params)
    with pytest.raises(ValueError, match="names no class"):
        image_runner.predict([ItemInput(0, "3", 1), ItemInput(1, "a cat", 2)], params)


@pytest.mark.parametrize(
    "prompt, digit",
    [("3", 3), ("a handwritten 7", 7), ("SEVEN", 7), ("seven.", 7), ("draw a zero, please", 0), ("7 7 seven", 7)],
)
def test_prompt_to_class(image_runner, prompt, digit):
    assert image_runner.class_of(prompt) == digit


@pytest.mark.parametrize("prompt", ["17", "sevens", "3 or seven", "digit7", ""])
def test_prompt_with_no_or_several_classes_is_refused(image_runner, prompt):
    with pytest.raises(ValueError, match="names (no class|several classes)"):
        image_runner.class_of(prompt)


def test_demo_image_polls_should_stop_every_step(image_runner, demo_registry):
    stop = StopAfter(3)
    with pytest.raises(Cancelled):
        image_runner.predict([ItemInput(0, "3", 1)], image_params(demo_registry), should_stop=stop)
    assert stop.calls == 3


def test_thread_picker_trains_with_the_faster_thread_count():
    import time

    import torch

    from worker.demo import ThreadPicker

    before = torch.get_num_threads()
    picker = ThreadPicker(candidates=(2, 1), trial_steps=2, period_s=60)
    try:
        for _ in range(2 + 2 * 2 + 3):  # warm-up, one trial, then the chosen count
            with picker.step():
                time.sleep(0.03 if torch.get_num_threads() == 2 else 0.001)
        assert picker.chosen == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_class_conditional_runner_needs_labels(demo_build):
    from shared.errors import ConfigError
    from shared.registry import ModelSpec
    from worker.runners.class_conditional import ClassConditionalImageRunner

    spec = ModelSpec(name="digits", task="text-to-image", source=str(demo_build[0] / "demo-image"))
    with pytest.raises(ConfigError, match="options.labels"):
        ClassConditionalImageRunner(spec, "cpu")
    too_many = spec.model_copy(update={"options": {"labels": [str(i) for i in range(12)]}})
    with pytest.raises(ConfigError, match="12 labels but the UNet knows 11 classes"):
        ClassConditionalImageRunner(too_many, "cpu").setup()
