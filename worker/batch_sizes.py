"""How many items a micro-batch may hold, learned from out-of-memory errors.

The registry's `micro_batch_size` is the most a model's micro-batch holds. When a
micro-batch runs out of device memory the size is halved, but only for jobs whose
memory-driving parameters fall in the same range (`memory_range`): one 1024x1024
image job must not shrink every later 256x256 job, nor a `max_new_tokens` of 2000
every later one of 20. After `GENQ_OOM_PROBE_AFTER` micro-batches that ran at the
lowered size without trouble, the next one tries twice the size again (never above
the registry's size); a probe that runs out of memory halves it back, and the wait
before the next probe doubles, so a size that really does not fit is retried ever
more rarely. What was learned lives in the worker process, per model and range.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shared import watch
from shared.registry import ModelSpec

log = logging.getLogger(__name__)

_PIXELS = ("width", "height")  # their product, the image area, drives an image micro-batch's memory


@dataclass
class _Learned:
    size: int
    successes: int = 0
    probe_after: int = 0
    probing: bool = False


def _power_of_two_at_least(value: float) -> int:
    bucket = 1
    while bucket < value:
        bucket *= 2
    return bucket


def memory_range(params: dict[str, Any]) -> tuple:
    """The range of memory-driving parameters a micro-batch runs with: image area and
    `max_new_tokens` rounded up to a power of two, beams, images per prompt, and whether
    classifier-free guidance doubles the model's batch. Jobs in one range share what
    out-of-memory taught; other parameters (steps, temperature, ...) do not matter."""
    key: list[tuple[str, Any]] = []
    width, height = (params.get(name) for name in _PIXELS)
    if isinstance(width, (int, float)) and isinstance(height, (int, float)):
        key.append(("pixels", _power_of_two_at_least(width * height)))
    for name in ("max_new_tokens", "num_beams", "num_images_per_prompt"):
        value = params.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            key.append((name, _power_of_two_at_least(value)))
    guidance = params.get("guidance_scale")
    if isinstance(guidance, (int, float)):
        key.append(("guided", guidance > 1))
    return tuple(key)


def describe(key: tuple) -> str:
    return ", ".join(f"{name}<={value}" if not isinstance(value, bool) else f"{name}={value}" for name, value in key) or "any parameters"


class BatchSizes:
    """Micro-batch sizes per (model, parameter range), lowered by out-of-memory and
    probed upward again after `probe_after` good micro-batches."""

    def __init__(self, probe_after: int = 20):
        self.probe_after = max(1, probe_after)
        self._learned: dict[tuple[str, tuple], _Learned] = {}

    def size(self, spec: ModelSpec, params: dict[str, Any]) -> int:
        learned = self._learned.get((spec.name, memory_range(params)))
        return spec.micro_batch_size if learned is None else min(learned.size, spec.micro_batch_size)

    def ran_out_of_memory(self, spec: ModelSpec, params: dict[str, Any], batch_size: int) -> int:
        """A micro-batch of `batch_size` did not fit: the range's size becomes at most half
        of it (at least 1). Returns the new size."""
        watch.out_of_memory_halved(spec.name)  # for /metrics
        key = (spec.name, memory_range(params))
        learned = self._learned.setdefault(key, _Learned(size=spec.micro_batch_size, probe_after=self.probe_after))
        half = max(1, batch_size // 2)
        if learned.probing:
            learned.probe_after *= 2  # that size does not fit: wait longer before the next try
        learned.probing, learned.successes = False, 0
        if half < learned.size:
            learned.size = half
            log.warning("out of memory at micro-batch %d: %s now runs micro-batches of %d for %s",
                        batch_size, spec.name, half, describe(key[1]))
        return learned.size

    def succeeded(self, spec: ModelSpec, params: dict[str, Any], batch_size: int) -> None:
        """A micro-batch of `batch_size` ran; after enough at the lowered size, probe twice it."""
        learned = self._learned.get((spec.name, memory_range(params)))
        if learned is None or batch_size < learned.size:
            return
        learned.probing = False
        learned.successes += 1
        if learned.successes >= learned.probe_after and learned.size < spec.micro_batch_size:
            learned.size = min(spec.micro_batch_size, learned.size * 2)
            learned.successes, learned.probing = 0, True
            log.info("%s tries micro-batches of %d again for %s", spec.name, learned.size, describe(memory_range(params)))
