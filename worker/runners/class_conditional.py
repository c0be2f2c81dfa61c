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
from typing import Any, Callable, Sequence

import torch
from diffusers import DiffusionPipeline

from shared.errors import ConfigError
from shared.registry import ModelSpec
from worker.runners.base import BaseRunner, Cancelled, ItemInput, ItemOutput
from worker.runners.common import ClassNames, image_outputs, load_options, make_generator, param, resolve_source

DEFAULT_STEPS = 25
DEFAULT_DISPLAY_SIZE = 64


class ClassConditionalImageRunner(BaseRunner):
    """Runs a class-conditional UNet over micro-batches; one grayscale or RGB PNG per item."""

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        super().__init__(spec, device)
        self.classes = ClassNames(spec.options.get("labels") or [])
        if not self.classes:
            raise ConfigError(f"model {spec.name!r}: options.labels must list the class names")
        self.display_size = int(spec.options.get("display_size", DEFAULT_DISPLAY_SIZE))
        self.unet = None
        self.scheduler = None

    def setup(self) -> None:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        pipe = DiffusionPipeline.from_pretrained(resolve_source(self.spec), **load_options(self.spec, self.device))
        unet = pipe.unet.to(self.device).eval()
        known = unet.config.num_class_embeds or 0
        if known < len(self.classes):
            raise ConfigError(f"model {self.spec.name!r}: {len(self.classes)} labels but the UNet knows {known} classes")
        self.unet, self.scheduler = unet, pipe.scheduler

    @property
    def null_class(self) -> int | None:
        """The "no class" index used for guidance, if the UNet was trained with one."""
        return len(self.classes) if self.unet.config.num_class_embeds == len(self.classes) + 1 else None

    def class_of(self, prompt: str) -> int:
        """The class index a prompt names; `ValueError` if it names none or several."""
        return self.classes.index_of(prompt)

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
        return image_outputs(samples, params, self.display_size)


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

