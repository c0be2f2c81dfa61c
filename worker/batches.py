"""Running items through a model in micro-batches.

On out-of-memory the micro-batch is halved and retried; the model's registry entry
keeps the smaller size for the rest of the process. At one item, the item fails with
`out_of_memory`. Any other error in a micro-batch reruns its items one by one, so a
bad item fails alone.
"""
from __future__ import annotations

import logging
from typing import Callable

from celery.exceptions import SoftTimeLimitExceeded

from shared.ledger import ClaimedItem
from shared.registry import ModelSpec
from worker.memory import OutOfMemory, free_device_memory, is_out_of_memory
from worker.runners.base import Cancelled, ItemOutput, Runner

log = logging.getLogger(__name__)

Outcome = ItemOutput | Exception


def run_micro_batch(
    runner: Runner, spec: ModelSpec, batch: list[ClaimedItem], params: dict, should_stop: Callable[[], bool]
) -> list[tuple[ClaimedItem, Outcome]]:
    try:
        return list(zip(batch, runner.predict(batch, params, should_stop)))
    except (Cancelled, SoftTimeLimitExceeded):  # they stop the slice, not an item
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            return _after_out_of_memory(runner, spec, batch, params, should_stop, exc)
        if len(batch) == 1:
            return [(batch[0], exc)]
        log.warning("micro-batch of %d failed (%s); running its items one by one", len(batch), exc)
        return _one_by_one(runner, spec, batch, params, should_stop)


def _after_out_of_memory(runner, spec, batch, params, should_stop, exc) -> list[tuple[ClaimedItem, Outcome]]:
    free_device_memory()
    if len(batch) == 1:
        return [(batch[0], OutOfMemory(f"out_of_memory: one item does not fit ({exc})"))]
    half = len(batch) // 2
    if spec.micro_batch_size > half:
        log.warning("out of memory at micro-batch %d: %s now runs micro-batches of %d", len(batch), spec.name, half)
        spec.micro_batch_size = half
    return run_micro_batch(runner, spec, batch[:half], params, should_stop) + run_micro_batch(
        runner, spec, batch[half:], params, should_stop
    )


def _one_by_one(runner, spec, batch, params, should_stop) -> list[tuple[ClaimedItem, Outcome]]:
    results = []
    for item in batch:
        results.extend(run_micro_batch(runner, spec, [item], params, should_stop))
    return results
