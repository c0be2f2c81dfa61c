"""demo-dcgan and demo-vae: quick builds (a few training steps), their quality.json, and
serving them through the registry entries the demo recipe writes.

The models are barely trained here, so these tests check the plumbing and the figures'
shape, not the quality (README "Models" gives the full-size figures)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from shared.registry import load_registry
from tests.worker.conftest import png_pixels
from web.request_models import effective_params
from worker.demo import DCGAN_MODEL, VAE_MODEL, build_demo_models, demo_registry_entries, read_quality
from worker.demo.quality import digits_judge, judge_generator, mean_pairwise_distance
from worker.demo.vae import PIXEL_SIGMA, negative_elbo
from worker.runners import build_runner
from worker.runners.base import ItemInput
from worker.runners.generator_modules import CONFIG_FILE, WEIGHTS_FILE

GENERATORS = (DCGAN_MODEL, VAE_MODEL)


@pytest.fixture(scope="module")
def generator_build(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo-generators")
    lines: list[str] = []
    torch.set_num_threads(1)
    figures = build_demo_models(out_dir, quick=True, progress=lines.append, only=GENERATORS)
    return out_dir, figures, lines


@pytest.fixture(scope="module")
def generator_registry(generator_build, tmp_path_factory):
    path = tmp_path_factory.mktemp("generator-registry") / "models.yaml"
    entries = demo_registry_entries(generator_build[0])
    entries["models"] = {name: entries["models"][name] for name in GENERATORS}
    path.write_text(yaml.safe_dump(entries))
    return load_registry(path)


def test_only_the_named_demo_models_are_built_with_their_quality(generator_build):
    out_dir, figures, lines = generator_build
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(GENERATORS)
    for name in GENERATORS:
        assert sorted(p.name for p in (out_dir / name).iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, "quality.json"])
        quality = read_quality(out_dir / name)
        assert quality == figures[name]
        assert 0 <= quality["class_accuracy"] <= 1 and 0 <= quality["noise_accuracy"] <= 1 and quality["steps"] >= 1
        diversity = quality["diversity"]
        assert diversity["generated"] > 0 and diversity["real"] > 0
        assert diversity["ratio"] == pytest.approx(diversity["generated"] / diversity["real"], abs=0.01)
        assert any(line.startswith(f"{name}:") for line in lines)
    assert figures[VAE_MODEL]["kl"] >= 0 and figures[VAE_MODEL]["reconstruction_loss"] > 0


def test_an_unknown_demo_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no demo model named demo-nope"):
        build_demo_models(tmp_path, quick=True, progress=lambda line: None, only=("demo-nope",))


@pytest.mark.parametrize("name", GENERATORS)
def test_the_built_generators_serve_digits_through_their_registry_entries(generator_registry, name):
    spec = generator_registry.get(name)
    runner = build_runner(spec, "cpu")
    runner.setup()
    params = effective_params(spec, {})
    assert (params["width"], params["height"]) == (64, 64)
    items = [ItemInput(0, "a 3", 1), ItemInput(1, "seven", 2)]
    outputs = runner.predict(items, params)
    assert [png_pixels(o.image_png).shape for o in outputs] == [(64, 64, 3)] * 2
    walk = effective_params(spec, {"interpolate": {"from_seed": 1, "to_seed": 2, "steps": 3}})
    steps = runner.predict([ItemInput(i, "a 3", 1) for i in range(3)], walk)
    assert steps[0].image_png == outputs[0].image_png


def test_diversity_is_zero_for_copies_and_grows_with_spread():
    same = torch.zeros(5, 1, 8, 8)
    assert mean_pairwise_distance(same) == 0
    spread = torch.stack([torch.full((1, 8, 8), v) for v in (-1.0, 1.0)])
    assert mean_pairwise_distance(spread) == pytest.approx(8.0)  # 64 pixels, each 1 apart: sqrt(64)


def test_a_generator_that_copies_one_real_digit_per_class_has_no_diversity():
    from worker.demo.quality import load_digits, to_model_range

    images, targets = load_digits()
    real = to_model_range(images)
    first = {digit: real[int(np.flatnonzero(targets == digit)[0])] for digit in range(10)}
    figures = judge_generator(lambda seeds, classes: torch.stack([first[c] for c in classes]),
                              digits_judge(), images, targets, samples=50, per_class=10)
    assert figures["class_accuracy"] >= 0.9 and figures["diversity"]["ratio"] == 0


def test_the_vae_loss_is_reconstruction_plus_kl():
    pixels = torch.tensor([[0.0, 1.0]])
    reconstruction, kl = negative_elbo(pixels, torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2), torch.zeros(1, 2))
    assert kl.item() == 0 and reconstruction.item() == pytest.approx(2 * 0.25 / (2 * PIXEL_SIGMA**2))
    _, kl = negative_elbo(pixels, pixels.clamp(0.1, 0.9), torch.ones(1, 2), torch.zeros(1, 2))
    assert kl.item() == pytest.approx(1.0)  # 0.5 * mean^2 per dimension


def test_genq_up_builds_only_the_demo_models_that_are_missing(tmp_path, monkeypatch):
    """An install from before demo-dcgan and demo-vae existed gets those two, not a rebuild."""
    from genq.up import Up
    from shared.settings import Settings

    models_dir = tmp_path / "models"
    (models_dir / "demo-text").mkdir(parents=True)
    (models_dir / "demo-image").mkdir()
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump(demo_registry_entries(models_dir)))
    up = Up(Settings(data_dir=tmp_path / "var", models_file=models_file), port=None, gpus="none")
    commands = []
    monkeypatch.setattr(up.supervisor, "run", lambda name, argv, env, abort: commands.append(argv) or 0)
    assert up.prepare_models().names() == sorted(["demo-dcgan", "demo-image", "demo-text", "demo-vae"])
    [argv] = commands
    assert argv[-5:] == ["build-demo", "--out", str(models_dir), "--only=demo-dcgan", "--only=demo-vae"]
