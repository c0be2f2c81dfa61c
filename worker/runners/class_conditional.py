"""Class-conditional image generation: a `UNet2DModel` with class embeddings.

The model is a diffusers pipeline directory (`model_index.json` with a `unet` and a
`scheduler`, e.g. a `DDIMPipeline`), loaded with `DiffusionPipeline.from_pretrained`
like any other. diffusers' unconditional pipelines cannot pass `class_labels` to the
UNet, so this runner samples with the pipeline's unet and scheduler in its own loop.

The class comes from the prompt: `spec.options["labels"]` lists the class names in
class-index order, and a prompt selects class i by naming `labels[i]` or the number i
as a whole word ("a handwritten 7", "Seven"). A prompt that names no class, or two
different ones, is refused with `ValueError` before anything runs.

Guidance: a UNet with one class embedding more than there are labels was trained
with that extra class standing for "no class", and then `guidance_scale` > 1 mixes
conditional and unconditional predictions (classifier-free guidance). Otherwise
`guidance_scale` is ignored.

Batch independence: each item's starting noise (and any noise a stochastic scheduler
adds) is drawn from that item's own generator; every other operation works per row.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Sequence

import torch
from diffusers import DiffusionPipeline

from shared.errors import ConfigError
from shared.registry import ModelSpec
from worker.runners.base import BaseRunner, Cancelled, ItemInput, ItemOutput
from worker.runners.common import load_options, make_generator, param, resolve_source
from worker.runners.image import to_png

DEFAULT_STEPS = 25
DEFAULT_DISPLAY_SIZE = 64


class ClassConditionalImageRunner(BaseRunner):
    """Runs a class-conditional UNet over micro-batches; one grayscale or RGB PNG per item."""

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        super().__init__(spec, device)
        self.labels = [str(label) for label in spec.options.get("labels") or []]
        if not self.labels:
            raise ConfigError(f"model {spec.name!r}: options.labels must list the class names")
        self.display_size = int(spec.options.get("display_size", DEFAULT_DISPLAY_SIZE))
        self.unet = None
        self.scheduler = None
        self._patterns = class_patterns(self.labels)

    def setup(self) -> None:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        pipe = DiffusionPipeline.from_pretrained(resolve_source(self.spec), **load_options(self.spec, self.device))
        unet = pipe.unet.to(self.device).eval()
        known = unet.config.num_class_embeds or 0
        if known < len(self.labels):
            raise ConfigError(f"model {self.spec.name!r}: {len(self.labels)} labels but the UNet knows {known} classes")
        self.unet, self.scheduler = unet, pipe.scheduler

    @property
    def null_class(self) -> int | None:
        """The "no class" index used for guidance, if the UNet was trained with one."""
        return len(self.labels) if self.unet.config.num_class_embeds == len(self.labels) + 1 else None

    def class_of(self, prompt: str) -> int:
        """The class index a prompt names; `ValueError` if it names none or several."""
        found = sorted({index for index, pattern in enumerate(self._patterns) if pattern.search(prompt)})
        if len(found) == 1:
            return found[0]
        names = ", ".join(f"{i} ({label})" for i, label in enumerate(self.labels))
        if not found:
            raise ValueError(f"prompt {prompt!r} names no class; name one of: {names}")
        named = ", ".join(self.labels[i] for i in found)
        raise ValueError(f"prompt {prompt!r} names several classes ({named}); name exactly one")

    def loaded(self) -> bool:
        return self.unet is not None

    def generate(
        self, inputs: list[ItemInput], params: dict[str, Any], should_stop: Callable[[], bool] | None
    ) -> list[ItemOutput]:
        classes = [self.class_of(item.prompt) for item in inputs]
        guidance = float(param(params, "guidance_scale", 1.0))
        samples = sample(
            self.unet,
            self.scheduler,
            classes,
            [make_generator(item.seed) for item in inputs],
            num_inference_steps=int(param(params, "num_inference_steps", DEFAULT_STEPS)),
            guidance_scale=guidance if self.null_class is not None else 1.0,
            null_class=self.null_class,
            should_stop=should_stop,
        )
        size = (int(param(params, "width", self.display_size)), int(param(params, "height", self.display_size)))
        return [ItemOutput(image_png=to_png(image)) for image in to_images(samples, size)]


def class_patterns(labels: Sequence[str]) -> list[re.Pattern]:
    """Per class, a case-insensitive pattern matching its name or its index as a whole word."""
    return [
        re.compile(rf"(?<!\w)(?:{re.escape(label)}|{index})(?!\w)", re.IGNORECASE)
        for index, label in enumerate(labels)
    ]


@torch.inference_mode()
def sample(
    unet,
    scheduler,
    classes: Sequence[int],
    generators: Sequence[torch.Generator],
    *,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Denoise one sample per class label; returns (n, channels, size, size) in [-1, 1].

    `scheduler` is set to `num_inference_steps` (it is mutated: use one per thread).
    `should_stop` is polled before every step; it raises `Cancelled`.
    """
    config = unet.config
    device, dtype = unet.device, unet.dtype
    shape = (config.in_channels, config.sample_size, config.sample_size)
    sample_ = torch.cat([torch.randn((1, *shape), generator=g) for g in generators]).to(device, dtype)
    labels = torch.tensor(list(classes), dtype=torch.long, device=device)
    guided = guidance_scale != 1.0 and null_class is not None
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, null_class)])
    scheduler.set_timesteps(num_inference_steps, device=device)
    sample_ = sample_ * scheduler.init_noise_sigma
    step_kwargs = _step_kwargs(scheduler, list(generators))
    for step, timestep in enumerate(scheduler.timesteps):
        if should_stop is not None and should_stop():
            raise Cancelled(f"generation cancelled before step {step + 1}")
        model_input = scheduler.scale_model_input(sample_, timestep)
        if guided:
            prediction = unet(torch.cat([model_input, model_input]), timestep, class_labels=labels).sample
            conditional, unconditional = prediction.chunk(2)
            prediction = unconditional + guidance_scale * (conditional - unconditional)
        else:
            prediction = unet(model_input, timestep, class_labels=labels).sample
        sample_ = scheduler.step(prediction, timestep, sample_, **step_kwargs).prev_sample
    return sample_.clamp(-1, 1).float().cpu()


def _step_kwargs(scheduler, generators: list[torch.Generator]) -> dict[str, Any]:
    """Scheduler-step arguments: the per-item generators (for stochastic schedulers), eta 0."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in accepted:
        # diffusers' randn_tensor draws row i from generators[i] when given a list.
        kwargs["generator"] = generators if len(generators) > 1 else generators[0]
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    return kwargs


def to_images(samples: torch.Tensor, size: tuple[int, int]) -> list:
    """(n, c, h, w) in [-1, 1] -> PIL images of `size`, upscaled with bicubic interpolation.

    Resizing is done by PIL per image, on 8-bit pixels, so it cannot mix rows.
    """
    from PIL import Image

    pixels = ((samples + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    images = [Image.fromarray(row[..., 0] if mode == "L" else row, mode=mode) for row in pixels]
    return [image.resize(size, Image.Resampling.BICUBIC) if image.size != size else image for image in images]
