"""GAN generators and VAE decoders: a seeded latent (and a class) to an image, one
forward pass per micro-batch. The module is loaded from `config.json` and
`model.safetensors` (see `worker.runners.generator_modules`).

The class comes from the prompt as for demo-image: `labels` (the registry's
`options.labels`, else the config's) lists the class names in index order, and a
prompt names one of them or its index ("a 7", "seven"). An unconditional module
ignores the prompt.

Each item's latent is drawn from its own seed. A latent walk (`params.interpolate`)
draws the latents of `from_seed` and `to_seed` and goes from one to the other along
the great circle between them (slerp, which keeps a Gaussian latent's norm where a
straight line would shrink it midway); the item's step, and so its place on the walk,
follows from its index.

Batch independence: latents are drawn per item on the CPU and every layer of an
eval-mode generator works per row (batch norm uses its running statistics).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from shared.errors import ConfigError
from shared.items import walk_fraction
from shared.registry import ModelSpec
from worker.runners.base import BaseRunner, ItemInput, ItemOutput
from worker.runners.common import ClassNames, image_outputs, make_generator, resolve_source, torch_dtype
from worker.runners.generator_modules import GeneratorConfig, load_generator

DEFAULT_DISPLAY_SIZE = 64


class GeneratorImageRunner(BaseRunner):
    """Runs a torch generator module over micro-batches; one PNG per item."""

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        super().__init__(spec, device)
        self.display_size = int(spec.options.get("display_size", DEFAULT_DISPLAY_SIZE))
        self.module = None
        self.config: GeneratorConfig | None = None
        self.classes = ClassNames([])

    def setup(self) -> None:
        module, config = load_generator(resolve_source(self.spec), self.device, torch_dtype(self.spec.dtype, self.device))
        classes = ClassNames(self.spec.options.get("labels") or config.labels or [])
        if config.num_classes and len(classes) != config.num_classes:
            raise ConfigError(f"model {self.spec.name!r}: {len(classes)} labels for a module of "
                              f"{config.num_classes} classes (set options.labels or the config's labels)")
        self.classes = classes
        self.module, self.config = module, config

    def loaded(self) -> bool:
        return self.module is not None

    def class_of(self, prompt: str) -> int:
        """The class index a prompt names; `ValueError` if it names none or several."""
        return self.classes.index_of(prompt)

    def generate(
        self, inputs: list[ItemInput], params: dict[str, Any], should_stop: Callable[[], bool] | None
    ) -> list[ItemOutput]:
        latents = torch.stack([self.latent(item, params) for item in inputs])
        samples = self.decode(latents, [item.prompt for item in inputs])
        return image_outputs(samples, params, self.display_size)

    def latent(self, item: ItemInput, params: dict[str, Any]) -> torch.Tensor:
        """The item's latent: from its seed, or its step of the prompt's latent walk."""
        walk = params.get("interpolate")
        if not walk:
            return seeded_latent(item.seed, self.config.latent_size)
        start = seeded_latent(walk["from_seed"], self.config.latent_size)
        end = seeded_latent(walk["to_seed"], self.config.latent_size)
        return slerp(start, end, walk_fraction(item.index, params))

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(n, latent) -> (n, c, h, w) in [-1, 1], on the CPU."""
        latents = latents.to(self.device, dtype=next(self.module.parameters()).dtype)
        if self.config.num_classes:
            labels = torch.tensor([self.class_of(p) for p in prompts], dtype=torch.long, device=self.device)
            images = self.module(latents, labels)
        else:
            images = self.module(latents)
        images = images.float().cpu()
        if self.config.output == "sigmoid":
            images = images * 2 - 1
        expected = (len(prompts), *self.config.image_shape)
        if tuple(images.shape) != expected:
            raise RuntimeError(f"the module returned images of shape {tuple(images.shape)}, expected {expected}")
        return images.clamp(-1, 1)


def seeded_latent(seed: int, size: int) -> torch.Tensor:
    """A standard normal latent of `size` drawn from `seed` alone (on the CPU)."""
    return torch.randn(size, generator=make_generator(seed))


def slerp(start: torch.Tensor, end: torch.Tensor, fraction: float) -> torch.Tensor:
    """Spherical interpolation; a straight line where the two are (nearly) parallel."""
    cosine = torch.dot(start / start.norm(), end / end.norm()).clamp(-1.0, 1.0)
    angle = torch.arccos(cosine)
    if angle.abs() < 1e-4:
        return torch.lerp(start, end, fraction)
    sine = torch.sin(angle)
    return (torch.sin((1 - fraction) * angle) / sine) * start + (torch.sin(fraction * angle) / sine) * end
