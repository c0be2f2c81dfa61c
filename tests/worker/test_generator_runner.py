"""GeneratorImageRunner on small random GAN and VAE modules saved as config + safetensors:
classes from prompts, seeds, batch independence, latent walks, cancel, PNG output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import ConfigError
from shared.registry import ModelSpec
from tests.worker.conftest import PIXEL_TOLERANCE, StopAfter, png_pixels, ready_runner
from worker.runners.base import Cancelled, ItemInput
from worker.runners.generator import seeded_latent, slerp
from worker.runners.generator_modules import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ConditionalDCGANGenerator,
    ConditionalVAEDecoder,
    save_generator,
)

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PARAMS = {"width": 32, "height": 32}


def save_random_gan(directory):
    torch.manual_seed(0)
    module = ConditionalDCGANGenerator(latent_size=8, num_classes=10, width=8)
    for layer in module.modules():  # running statistics that are not the identity, as after training
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean.uniform_(-0.2, 0.2)
            layer.running_var.uniform_(0.5, 1.5)
    save_generator(module, directory, {
        "class": "worker.runners.generator_modules:ConditionalDCGANGenerator",
        "kwargs": {"latent_size": 8, "num_classes": 10, "width": 8},
        "latent_size": 8, "image_shape": [1, 8, 8], "num_classes": 10, "output": "tanh", "labels": LABELS,
    })
    return directory


def save_random_vae(directory):
    torch.manual_seed(1)
    save_generator(ConditionalVAEDecoder(latent_size=4, num_classes=10, hidden=16), directory, {
        "class": "worker.runners.generator_modules:ConditionalVAEDecoder",
        "kwargs": {"latent_size": 4, "num_classes": 10, "hidden": 16},
        "latent_size": 4, "image_shape": [1, 8, 8], "num_classes": 10, "output": "sigmoid",
    })
    return directory


@pytest.fixture(scope="module")
def gan_runner(tmp_path_factory):
    source = save_random_gan(tmp_path_factory.mktemp("gan"))
    return ready_runner(ModelSpec(name="gan", task="gan-image", source=str(source), micro_batch_size=16))


@pytest.fixture(scope="module")
def vae_runner(tmp_path_factory):
    source = save_random_vae(tmp_path_factory.mktemp("vae"))
    return ready_runner(ModelSpec(name="vae", task="vae-image", source=str(source), options={"labels": LABELS}))


@pytest.fixture(params=["gan", "vae"])
def runner(request, gan_runner, vae_runner):
    return gan_runner if request.param == "gan" else vae_runner


def pixels(outputs) -> list[np.ndarray]:
    return [png_pixels(output.image_png) for output in outputs]


BATCH = [ItemInput(i, prompt, 40 + i) for i, prompt in enumerate(["a 3", "seven", "0", "Nine", "a one", "6"])]


def test_images_are_pngs_of_the_requested_size(runner):
    images = pixels(runner.predict(BATCH[:2], PARAMS))
    assert [image.shape for image in images] == [(32, 32, 3)] * 2
    wide = pixels(runner.predict(BATCH[:1], {"width": 48, "height": 16}))
    assert wide[0].shape == (16, 48, 3)


def test_an_item_gives_the_same_image_alone_and_in_a_batch(runner):
    together = pixels(runner.predict(BATCH, PARAMS))
    for item, image in zip(BATCH, together):
        assert np.abs(pixels(runner.predict([item], PARAMS))[0] - image).max() <= PIXEL_TOLERANCE
    reversed_ = pixels(runner.predict(BATCH[::-1], PARAMS))[::-1]
    assert all(np.abs(a - b).max() <= PIXEL_TOLERANCE for a, b in zip(together, reversed_))


def test_the_seed_and_the_class_decide_the_image(runner):
    first = runner.predict([ItemInput(0, "a 7", 5)], PARAMS)[0].image_png
    assert runner.predict([ItemInput(3, "Seven", 5)], PARAMS)[0].image_png == first  # same class, same seed
    assert runner.predict([ItemInput(0, "a 7", 6)], PARAMS)[0].image_png != first
    assert runner.predict([ItemInput(0, "a 2", 5)], PARAMS)[0].image_png != first


def test_a_prompt_without_one_class_is_refused(runner):
    for prompt in ("a cat", "3 or 4"):
        with pytest.raises(ValueError, match="class"):
            runner.predict([ItemInput(0, prompt, 1)], PARAMS)


def test_a_latent_walk_goes_from_one_seed_to_the_other(runner):
    walk = {**PARAMS, "interpolate": {"from_seed": 11, "to_seed": 12, "steps": 5}}
    items = [ItemInput(index, prompt, 11) for index, prompt in enumerate(["a 4"] * 5 + ["a 8"] * 5)]
    steps = pixels(runner.predict(items, walk))
    assert np.array_equal(steps[0], pixels(runner.predict([ItemInput(0, "a 4", 11)], PARAMS))[0])
    assert np.abs(steps[4] - pixels(runner.predict([ItemInput(0, "a 4", 12)], PARAMS))[0]).max() <= PIXEL_TOLERANCE
    assert np.abs(steps[9] - pixels(runner.predict([ItemInput(0, "a 8", 12)], PARAMS))[0]).max() <= PIXEL_TOLERANCE
    assert len({step.tobytes() for step in steps[:5]}) == 5  # every step is a different image
    alone = pixels(runner.predict([items[7]], walk))[0]  # a step alone: its place comes from its index
    assert np.abs(alone - steps[7]).max() <= PIXEL_TOLERANCE


def test_slerp_keeps_the_ends_and_the_norm():
    start, end = seeded_latent(1, 64), seeded_latent(2, 64)
    assert torch.allclose(slerp(start, end, 0.0), start) and torch.allclose(slerp(start, end, 1.0), end, atol=1e-5)
    middle = slerp(start, end, 0.5)
    assert abs(middle.norm() - (start.norm() + end.norm()) / 2) < 0.1 * start.norm()
    assert torch.lerp(start, end, 0.5).norm() < middle.norm()


def test_cancel_before_the_forward_pass(runner):
    with pytest.raises(Cancelled):
        runner.predict(BATCH, PARAMS, should_stop=StopAfter(1))
    assert len(runner.predict(BATCH[:1], PARAMS, should_stop=lambda: False)) == 1


def test_weights_are_safetensors_and_the_config_is_checked(tmp_path):
    source = save_random_gan(tmp_path / "gan")
    assert (source / WEIGHTS_FILE).read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    assert sorted(p.name for p in source.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    spec = ModelSpec(name="gan", task="gan-image", source=str(source), options={"labels": LABELS[:3]})
    with pytest.raises(ConfigError, match="3 labels"):
        ready_runner(spec)
    config = json.loads((source / CONFIG_FILE).read_text())
    (source / CONFIG_FILE).write_text(json.dumps({**config, "class": "worker.runners.generator_modules:Nope"}))
    with pytest.raises(ConfigError, match="Nope"):
        ready_runner(ModelSpec(name="gan", task="gan-image", source=str(source)))
    (source / CONFIG_FILE).unlink()
    with pytest.raises(ConfigError, match="config.json"):
        ready_runner(ModelSpec(name="gan", task="gan-image", source=str(source)))


def test_serving_a_generator_module_loads_neither_diffusers_nor_transformers():
    """A GAN or VAE worker imports torch only (diffusers and transformers take seconds)."""
    code = ("import sys, worker.runners.generator\n"
            "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
