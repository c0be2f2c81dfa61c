"""Image generation with a diffusers pipeline (text-to-image or unconditional).

Batch independence: each item gets its own CPU `torch.Generator`, passed to the
pipeline as a list, so its starting noise (and any scheduler noise) comes from its
own seed whatever else shares the batch.

Safety checkers: a pipeline that carries one (Stable Diffusion's
`StableDiffusionSafetyChecker`) says per image whether it flagged it
(`nsfw_content_detected`, `nsfw_detected` in DeepFloyd IF) and replaces a flagged image
by a black one. The item of a flagged image fails with `ContentFlagged`
("nsfw_content_detected: ..."), returned in its place among the outputs, while the
rest of the micro-batch succeeds: a black PNG is never stored as a success. (A
deployment that does not want the check saves its pipeline without a checker.)

Cancellation and progress: pipelines that take `callback_on_step_end` get a callback
that reports the step and raises `Cancelled` after a step, which aborts the call. The
others (DDPM, DDIM, ...) have their progress bar replaced by one that does the same on
every step.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch
from diffusers import DiffusionPipeline

from shared.registry import ModelSpec, Task
from worker.runners.base import BaseRunner, Cancelled, ItemInput, ItemOutput
from worker.runners.common import load_options, make_generator, resolve_source, to_png

# What pipelines call the per-image flags of their safety checker.
_SAFETY_FLAGS = ("nsfw_content_detected", "nsfw_detected")

# Job parameters handed to the pipeline call when it accepts them.
_TEXT_TO_IMAGE_PARAMS = ("num_inference_steps", "guidance_scale", "width", "height", "negative_prompt", "eta")
_UNCONDITIONAL_PARAMS = ("num_inference_steps", "eta")


class ContentFlagged(Exception):
    """The pipeline's safety checker flagged an item's image; the item fails with this."""


class ImageRunner(BaseRunner):
    """Runs a diffusers pipeline over micro-batches of items; one PNG per item."""

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        super().__init__(spec, device)
        self.pipe = None
        self._call_params: set[str] = set()
        self._accepts_any = False

    def setup(self) -> None:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # loading bars would flood the worker's log
        transformers_logging.disable_progress_bar()
        # diffusers 0.42 deprecates `torch_dtype=` in favour of `dtype=`.
        pipe = DiffusionPipeline.from_pretrained(resolve_source(self.spec), **load_options(self.spec, self.device))
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        signature = inspect.signature(pipe.__call__).parameters
        self._call_params = set(signature)
        self._accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
        self.pipe = pipe

    def loaded(self) -> bool:
        return self.pipe is not None

    def generate(
        self, inputs: list[ItemInput], params: dict[str, Any], should_stop: Callable[[], bool] | None
    ) -> list[ItemOutput | ContentFlagged]:
        kwargs = self._call_kwargs(inputs, params)
        poll = _counting_steps(should_stop, self.progress, kwargs.get("num_inference_steps"))
        if self._accepts("callback_on_step_end"):
            kwargs["callback_on_step_end"] = _stop_callback(poll)
            poll = None
        with torch.inference_mode(), _polling_progress(self.pipe, poll):
            output = self.pipe(**kwargs)
        images = output.images
        if len(images) != len(inputs):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(inputs)} items")
        flags = _safety_flags(output, len(images))
        return [_flagged(item) if flagged else ItemOutput(image_png=to_png(image))
                for item, image, flagged in zip(inputs, images, flags)]

    def _call_kwargs(self, inputs: list[ItemInput], params: dict[str, Any]) -> dict[str, Any]:
        """The pipeline call's arguments: prompts or batch size, generators, parameters."""
        kwargs: dict[str, Any] = {
            "generator": [make_generator(item.seed) for item in inputs],
            "output_type": "pil",
        }
        if Task(self.spec.task) is Task.TEXT_TO_IMAGE:
            kwargs["prompt"] = [item.prompt for item in inputs]
            names = _TEXT_TO_IMAGE_PARAMS
        else:
            kwargs["batch_size"] = len(inputs)
            names = _UNCONDITIONAL_PARAMS
        for name in names:
            if params.get(name) is not None:
                kwargs[name] = params[name]
        if isinstance(kwargs.get("negative_prompt"), str):
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(inputs)
        return {name: value for name, value in kwargs.items() if self._accepts(name)}

    def _accepts(self, name: str) -> bool:
        """Whether the pipeline's `__call__` takes this keyword (checked once, in `setup`)."""
        return name in self._call_params or (self._accepts_any and name != "callback_on_step_end")


def _safety_flags(output, count: int) -> list[bool]:
    """Per image, whether the pipeline's safety checker flagged it (all False without one)."""
    for name in _SAFETY_FLAGS:
        flags = getattr(output, name, None)
        if flags is not None:
            flags = [bool(flag) for flag in flags]
            if len(flags) != count:
                raise RuntimeError(f"pipeline returned {len(flags)} {name} flags for {count} images")
            return flags
    return [False] * count


def _flagged(item: ItemInput) -> ContentFlagged:
    return ContentFlagged(
        f"nsfw_content_detected: the model's safety checker flagged the image of seed {item.seed} "
        "(diffusers blacked it out; nothing was stored); another prompt or seed may pass")


def _counting_steps(should_stop: Callable[[], bool] | None, progress, steps: int | None) -> Callable[[], bool]:
    """The per-step hook: reports the step to `progress` (which throttles its writes),
    then asks `should_stop`, if any."""
    done = 0

    def check() -> bool:
        nonlocal done
        done += 1
        progress(step=done if steps is None else min(done, int(steps)), steps=steps)
        return should_stop is not None and should_stop()

    return check


def _stop_callback(should_stop: Callable[[], bool]):
    """A `callback_on_step_end` that aborts the pipeline call when `should_stop()` is true.

    Raising (rather than setting `pipe._interrupt`) skips the VAE decode of a
    half-denoised batch and leaves nothing to reset on the pipeline.
    """

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if should_stop():
            raise Cancelled(f"generation cancelled after step {step + 1}")
        return callback_kwargs

    return on_step_end


class _polling_progress:
    """Context manager: while active, stop checks run on every denoising step.

    For pipelines without `callback_on_step_end`: the pipeline's `progress_bar`
    method is shadowed on the instance by `_StopCheckingBar`, which diffusers' loops
    iterate (`for t in self.progress_bar(timesteps)`) or update
    (`progress_bar.update()`). With `should_stop=None` it does nothing.
    """

    def __init__(self, pipe, should_stop: Callable[[], bool] | None):
        self.pipe, self.should_stop = pipe, should_stop

    def __enter__(self):
        if self.should_stop is not None:
            should_stop = self.should_stop
            self.pipe.progress_bar = lambda iterable=None, total=None: _StopCheckingBar(iterable, should_stop)
        return self

    def __exit__(self, *exc_info) -> None:
        self.pipe.__dict__.pop("progress_bar", None)


class _StopCheckingBar:
    """A silent stand-in for tqdm that raises `Cancelled` when `should_stop()` says so."""

    def __init__(self, iterable: Iterable | None, should_stop: Callable[[], bool]):
        self.iterable, self.should_stop = iterable, should_stop

    def __iter__(self):
        for value in self.iterable if self.iterable is not None else ():
            yield value
            self._check()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self._check()

    def _check(self) -> None:
        if self.should_stop():
            raise Cancelled("generation cancelled")
