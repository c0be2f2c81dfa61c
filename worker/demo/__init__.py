"""The demo models: small models trained on this machine's CPU from data that ships
with installed packages, saved with `save_pretrained` and served by the same registry
and runner code as any Hugging Face model.

- demo-text: a GPT-2 trained on the docstrings of the Python standard library
  (`worker.demo.text`).
- demo-image: a class-conditional diffusion UNet trained on scikit-learn's 8x8
  handwritten digits (`worker.demo.image`).
- demo-dcgan: a conditional DCGAN on the same digits (`worker.demo.dcgan`).
- demo-vae: a conditional VAE on the same digits (`worker.demo.vae`).

Training stops at a step cap or a wall-clock budget, whichever comes first, so a
slow or busy machine gets a less trained model rather than a longer wait. On a fast
machine the step cap is reached first and the build is deterministic.

Importing this package is cheap: torch, transformers and diffusers are imported by
`build_demo_models` only.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

Progress = Callable[[str], None]

TEXT_MODEL = "demo-text"
IMAGE_MODEL = "demo-image"
DCGAN_MODEL = "demo-dcgan"
VAE_MODEL = "demo-vae"
DEMO_MODELS = (TEXT_MODEL, IMAGE_MODEL, DCGAN_MODEL, VAE_MODEL)
DIGIT_LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DISPLAY_SIZE = 64
QUALITY_FILE = "quality.json"


def build_demo_models(
    out_dir: Path, *, quick: bool = False, progress: Progress = print, only: tuple[str, ...] | None = None
) -> dict[str, dict]:
    """Train and save the demo models (`DEMO_MODELS`, or those named in `only`) in
    `out_dir/<name>`; returns their quality figures.

    Full size takes about five minutes on two CPU cores; `quick=True` trains for a few
    steps only (seconds), for tests. Each model directory is written under a temporary
    name and renamed when complete, so an interrupted build leaves no half model behind.
    The figures are also written to `quality.json` in each model directory.
    """
    from worker.demo import dcgan, image, text, vae

    builders = {TEXT_MODEL: text.build_text_model, IMAGE_MODEL: image.build_image_model,
                DCGAN_MODEL: dcgan.build_dcgan_model, VAE_MODEL: vae.build_vae_model}
    unknown = sorted(set(only or ()) - set(builders))
    if unknown:
        raise ValueError(f"no demo model named {', '.join(unknown)}; the demo models are {', '.join(DEMO_MODELS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    started = time.monotonic()
    with all_cores(), quiet_libraries():
        for name, build in builders.items():
            if only is not None and name not in only:
                continue
            with staged_dir(out_dir / name) as staging:
                figures[name] = build(staging, quick=quick, progress=progress)
                write_quality(staging, figures[name])
    progress(f"demo models built in {out_dir} in {time.monotonic() - started:.0f} s")
    return figures


def demo_registry_entries(out_dir: Path | str) -> dict[str, Any]:
    """The registry YAML content (as a dict) serving the demo models built in `out_dir`."""
    out_dir = Path(out_dir)
    return {
        "models": {
            TEXT_MODEL: {
                "task": "text-generation",
                "source": str(out_dir / TEXT_MODEL),
                "dtype": "float32",
                "micro_batch_size": 32,
                "defaults": {"max_new_tokens": 48, "do_sample": True, "temperature": 0.8, "top_k": 40},
                "limits": {"max_new_tokens": {"max": 200}},
            },
            IMAGE_MODEL: {
                "task": "text-to-image",
                "source": str(out_dir / IMAGE_MODEL),
                "runner": "worker.runners.class_conditional:ClassConditionalImageRunner",
                "options": {"labels": list(DIGIT_LABELS), "display_size": DISPLAY_SIZE},
                "dtype": "float32",
                "micro_batch_size": 64,
                # The runner honours width/height (it upscales the 8x8 sample to them)
                # and guidance_scale (classifier-free guidance); negative_prompt is unused.
                "defaults": {
                    "num_inference_steps": 25,
                    "guidance_scale": 1.5,
                    "width": DISPLAY_SIZE,
                    "height": DISPLAY_SIZE,
                },
                "limits": {
                    "num_inference_steps": {"max": 200},
                    "guidance_scale": {"min": 1, "max": 5},
                    "width": {"min": 8, "max": 512},
                    "height": {"min": 8, "max": 512},
                },
            },
            DCGAN_MODEL: generator_entry("gan-image", out_dir / DCGAN_MODEL),
            VAE_MODEL: generator_entry("vae-image", out_dir / VAE_MODEL),
        }
    }


def generator_entry(task: str, source: Path) -> dict[str, Any]:
    """A digit generator's registry entry: the prompt names the digit; the 8x8 sample is
    upscaled to width x height; `interpolate` walks between two seeds' latents."""
    return {
        "task": task,
        "source": str(source),
        "options": {"labels": list(DIGIT_LABELS), "display_size": DISPLAY_SIZE},
        "dtype": "float32",
        "micro_batch_size": 256,
        "defaults": {"width": DISPLAY_SIZE, "height": DISPLAY_SIZE},
        "limits": {"width": {"min": 8, "max": 512}, "height": {"min": 8, "max": 512}},
    }


class TrainingClock:
    """When to stop training, how far along it is, and throttled progress lines.

    Training stops after `max_steps` or `budget_s` seconds, whichever comes first;
    `fraction(step)` is the larger of the two ratios, so a learning-rate schedule
    driven by it always completes.
    """

    def __init__(self, name: str, max_steps: int, budget_s: float, progress: Progress, every_s: float = 5.0):
        self.name, self.max_steps, self.budget_s = name, max_steps, budget_s
        self.progress, self.every_s = progress, every_s
        self.started = time.monotonic()
        self._last_report = self.started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fraction(self, step: int) -> float:
        return min(1.0, max(step / self.max_steps, self.elapsed() / self.budget_s))

    def done(self, step: int) -> bool:
        return self.fraction(step) >= 1.0

    def run(self, train_step: Callable[[int], Any]) -> int:
        """Call `train_step(step)` (one step; it returns the step's loss tensor) until the
        clock says stop, each with the thread count `ThreadPicker` finds faster, with
        progress lines; the thread count chosen stays set for the evaluation that
        follows. Returns the number of steps."""
        import torch

        picker = ThreadPicker()
        step = 0
        while not self.done(step):
            with picker.step():
                loss = train_step(step)
            step += 1
            self.report(step, loss.item(), picker.chosen)
        torch.set_num_threads(picker.chosen)
        return step

    def report(self, step: int, loss: float, threads: int | None = None) -> None:
        """A progress line every `every_s` seconds at most."""
        now = time.monotonic()
        if now - self._last_report < self.every_s:
            return
        self._last_report = now
        done = self.fraction(step)
        left = self.elapsed() * (1 - done) / done if done > 0 else self.budget_s
        note = f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
        self.progress(f"{self.name}: step {step}/{self.max_steps} loss {loss:.3f} ({left:.0f} s left{note})")


class ThreadPicker:
    """Trains with whichever torch thread count is faster right now, measured on real steps.

    On a machine shared with other busy processes, one thread can train several times
    faster than one per core (measured: 2.5 vs 0.6 steps/s on 2 cores at load 4),
    because each parallel operation waits for its slowest thread and a descheduled
    thread stalls them all. On an idle machine one thread per core is faster. So every
    `period_s` seconds each candidate runs `trial_steps` steps, and the one with the
    lower median step time is used until the next trial.
    """

    def __init__(self, candidates: tuple[int, ...] | None = None, trial_steps: int = 3, period_s: float = 10.0):
        self.candidates = candidates or tuple(dict.fromkeys((core_count(), 1)))
        self.trial_steps, self.period_s = trial_steps, period_s
        self.chosen = self.candidates[0]
        self._trial: list[int] = []  # thread counts of the trial steps still to run
        self._timings: dict[int, list[float]] = {}
        self._next_trial = time.monotonic()
        self._warm_up = 2  # the first steps are slow whatever the thread count

    @contextmanager
    def step(self) -> Iterator[None]:
        """Wrap one training step: sets the thread count and times the step."""
        import torch

        threads = self._threads_for_next_step()
        torch.set_num_threads(threads)
        started = time.perf_counter()
        yield
        if self._warm_up:
            self._warm_up -= 1
        elif threads in self._timings:
            self._timings[threads].append(time.perf_counter() - started)
            if not self._trial:
                self._choose()

    def _threads_for_next_step(self) -> int:
        if self._warm_up or len(self.candidates) == 1:
            return self.chosen
        if not self._trial and time.monotonic() >= self._next_trial:
            self._trial = [n for n in self.candidates for _ in range(self.trial_steps)]
            self._timings = {n: [] for n in self.candidates}
        return self._trial.pop(0) if self._trial else self.chosen

    def _choose(self) -> None:
        import statistics

        medians = {n: statistics.median(times) for n, times in self._timings.items() if times}
        self.chosen = min(medians, key=medians.get)
        self._timings = {}
        self._next_trial = time.monotonic() + self.period_s


def cosine_lr(peak: float, fraction: float, step: int, warmup_steps: int, floor: float = 0.1) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `floor * peak` at fraction 1."""
    import math

    warm = min(1.0, (step + 1) / warmup_steps)
    return peak * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * fraction)))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def all_cores() -> Iterator[None]:
    """One torch thread per core while building (`ThreadPicker` may train with fewer);
    the caller's thread count is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(core_count())
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence transformers' and diffusers' warnings and progress bars while building.

    They would interleave with our progress lines (saving shows a progress bar, and
    encoding a long docstring warns that it exceeds the model's length, which is
    expected: the stream is cut into blocks afterwards).
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (transformers_logging, diffusers_logging)
    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh `.<name>.partial` directory, renamed to `target` (replacing it) on success."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    make_readable(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def make_readable(directory: Path) -> None:
    """Give owner-only files (transformers 5 writes weights 0600) the usual 0644, so a
    worker running as another user (a container) can read them."""
    for path in directory.rglob("*"):
        if path.is_file() and path.stat().st_mode & 0o777 == 0o600:
            path.chmod(0o644)


def write_quality(model_dir: Path, figures: dict[str, Any]) -> None:
    (Path(model_dir) / QUALITY_FILE).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def read_quality(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / QUALITY_FILE).read_text())
