"""demo-dcgan: a conditional DCGAN trained on scikit-learn's 8x8 digits.

The primer's recipe: a generator of transposed convolutions with batch norm and ReLU
(tanh out), a discriminator of strided convolutions with LeakyReLU, binary
cross-entropy, Adam with lr 0.0002 and betas (0.5, 0.999) for both. Conditioning:
the generator embeds the class next to the latent; the discriminator sees the class
as ten one-hot planes stacked on the image. Real labels are smoothed to 0.9 (one-sided),
which keeps the discriminator from winning outright on so small a data set.

Saved as a generator module (`config.json` + `model.safetensors`) and served by
`worker.runners.generator.GeneratorImageRunner`; the figures are computed with the
same latents the runner draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.demo import DIGIT_LABELS, Progress, TrainingClock, seed_everything
from worker.demo.quality import digits_judge, judge_generator, load_digits, module_sampler, to_model_range
from worker.runners.generator_modules import ConditionalDCGANGenerator, save_generator

MODULE_CLASS = "worker.runners.generator_modules:ConditionalDCGANGenerator"
LEARNING_RATE = 2e-4
BETAS = (0.5, 0.999)
REAL_LABEL = 0.9


@dataclass(frozen=True)
class GanRecipe:
    latent_size: int
    width: int
    batch: int
    max_steps: int
    budget_s: float
    eval_samples: int
    per_class: int


FULL = GanRecipe(latent_size=32, width=32, batch=64, max_steps=1500, budget_s=100.0, eval_samples=500, per_class=100)
QUICK = GanRecipe(latent_size=8, width=8, batch=16, max_steps=5, budget_s=2.0, eval_samples=20, per_class=4)


class ConditionalDiscriminator(nn.Module):
    """8x8 image + class planes -> 4x4 -> 2x2 -> one logit (real or generated)."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Conv2d(1 + num_classes, width, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            nn.Linear(width * 2 * 2 * 2, 1),
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        planes = nn.functional.one_hot(labels, self.num_classes).to(images.dtype)[:, :, None, None]
        return self.net(torch.cat([images, planes.expand(-1, -1, *images.shape[2:])], dim=1)).view(-1)


def build_dcgan_model(out_dir: Path, *, quick: bool = False, progress: Progress = print) -> dict[str, Any]:
    """Train demo-dcgan and save its generator in `out_dir`; returns quality figures."""
    recipe = QUICK if quick else FULL
    seed_everything(0)
    images, targets = load_digits()
    progress(f"demo-dcgan: {len(images)} handwritten digits (8x8) from scikit-learn")
    generator = ConditionalDCGANGenerator(recipe.latent_size, len(DIGIT_LABELS), recipe.width)
    clock = TrainingClock("demo-dcgan", recipe.max_steps, recipe.budget_s, progress)
    steps = train(generator, to_model_range(images), torch.from_numpy(targets), recipe, clock)
    train_seconds = clock.elapsed()
    progress(f"demo-dcgan: judging {recipe.eval_samples} generated digits and their diversity")
    figures = judge_generator(module_sampler(generator, recipe.latent_size), digits_judge(), images, targets,
                              samples=recipe.eval_samples, per_class=recipe.per_class)
    save_generator(generator, out_dir, module_config(recipe))
    progress(f"demo-dcgan: the requested digit was recognised in {figures['class_accuracy']:.0%} of samples "
             f"(noise: {figures['noise_accuracy']:.0%}), diversity {figures['diversity']['ratio']:.2f} of the "
             f"real digits' after {steps} steps")
    return {**figures, "steps": steps, "train_seconds": round(train_seconds, 1),
            "parameters": sum(p.numel() for p in generator.parameters())}


def module_config(recipe: GanRecipe) -> dict[str, Any]:
    return {
        "class": MODULE_CLASS,
        "kwargs": {"latent_size": recipe.latent_size, "num_classes": len(DIGIT_LABELS), "width": recipe.width},
        "latent_size": recipe.latent_size,
        "image_shape": [1, 8, 8],
        "num_classes": len(DIGIT_LABELS),
        "output": "tanh",
        "labels": list(DIGIT_LABELS),
    }


def train(generator, images: torch.Tensor, labels: torch.Tensor, recipe: GanRecipe, clock: TrainingClock) -> int:
    """Alternate discriminator and generator steps until the clock says stop."""
    discriminator = ConditionalDiscriminator(len(DIGIT_LABELS), recipe.width)
    optimise_g = torch.optim.Adam(generator.parameters(), lr=LEARNING_RATE, betas=BETAS)
    optimise_d = torch.optim.Adam(discriminator.parameters(), lr=LEARNING_RATE, betas=BETAS)
    loss = nn.BCEWithLogitsLoss()
    rng = torch.Generator().manual_seed(0)
    real_target = torch.full((recipe.batch,), REAL_LABEL)
    fake_target, fooled_target = torch.zeros(recipe.batch), torch.ones(recipe.batch)

    def train_step(step: int) -> torch.Tensor:
        rows = torch.randint(0, len(images), (recipe.batch,), generator=rng)
        real, classes = images[rows], labels[rows]
        fake = generator(torch.randn(recipe.batch, recipe.latent_size, generator=rng), classes)
        loss_d = loss(discriminator(real, classes), real_target) + loss(discriminator(fake.detach(), classes),
                                                                         fake_target)
        optimise_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimise_d.step()
        loss_g = loss(discriminator(fake, classes), fooled_target)
        optimise_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimise_g.step()
        return loss_g

    generator.train()
    steps = clock.run(train_step)
    generator.eval()
    return steps
