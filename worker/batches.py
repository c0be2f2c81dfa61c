"""Running items through a model in micro-batches.

On out-of-memory the micro-batch is halved and retried, after the failed call's
exception (and with it every tensor its traceback kept alive: activations, a KV cache)
has been let go and the device cache emptied; the smaller size is remembered for jobs
of the same parameter range (see `worker.batch_sizes`). At one item, the item fails
with `out_of_memory`. A CUDA error that is not out-of-memory leaves the device unusable
for this process: `DeviceBroken` is raised so the slice is given back and the process
replaced (see `worker.device`). Any other error in a micro-batch reruns its items one
by one, so a bad item fails alone.
"""
from __future__ import annotations

import logging
from typing import Callable

from celery.exceptions import SoftTimeLimitExceeded

from shared.ledger import ClaimedItem
from shared.registry import ModelSpec
from worker.batch_sizes import BatchSizes
from worker.device import DeviceBroken, is_sticky_device_error
from worker.memory import OutOfMemory, detached, free_device_memory, is_out_of_memory
from worker.runners.base import Cancelled, ItemOutput, Runner

log = logging.getLogger(__name__)

Outcome = ItemOutput | Exception


def in_batch_order(runner: Runner, items: list[ClaimedItem], params: dict) -> list[ClaimedItem]:
    """A slice's items in the order its micro-batches take them: the runner's own
    `batch_order` where it has one (the text runner: by prompt length, to cut padding),
    else as claimed. Seeds travel with the items and results are matched by item."""
    order = getattr(runner, "batch_order", None)
    return list(items) if order is None else list(order(items, params))


def run_micro_batch(
    runner: Runner, spec: ModelSpec, batch: list[ClaimedItem], params: dict, should_stop: Callable[[], bool],
    sizes: BatchSizes,
) -> list[tuple[ClaimedItem, Outcome]]:
    outputs, error = _attempt(runner, batch, params, should_stop)
    if error is None:
        sizes.succeeded(spec, params, len(batch))
        return list(zip(batch, outputs))
    # Out of the handler now: nothing refers to the failed call's frames any more.
    if is_out_of_memory(error):
        return _after_out_of_memory(runner, spec, batch, params, should_stop, sizes, error)
    if is_sticky_device_error(error):
        raise DeviceBroken(f"device error, this worker process must be replaced: {error}") from error
    if len(batch) == 1:
        return [(batch[0], error)]
    log.warning("micro-batch of %d failed (%s); running its items one by one", len(batch), error)
    results = []
    for item in batch:
        results.extend(run_micro_batch(runner, spec, [item], params, should_stop, sizes))
    return results


def _attempt(runner, batch, params, should_stop) -> tuple[list[ItemOutput] | None, Exception | None]:
    """The runner's outputs, or the exception it raised without its traceback."""
    try:
        return runner.predict(batch, params, should_stop), None
    except (Cancelled, SoftTimeLimitExceeded):  # they stop the slice, not an item
        raise
    except Exception as exc:
        return None, detached(exc)


def _after_out_of_memory(runner, spec, batch, params, should_stop, sizes, error) -> list[tuple[ClaimedItem, Outcome]]:
    free_device_memory()
    if len(batch) == 1:
        return [(batch[0], OutOfMemory(f"out_of_memory: one item does not fit ({error})"))]
    sizes.ran_out_of_memory(spec, params, len(batch))
    results, rest = [], list(batch)
    while rest:
        size = min(sizes.size(spec, params), max(1, len(batch) // 2))
        chunk, rest = rest[:size], rest[size:]
        results.extend(run_micro_batch(runner, spec, chunk, params, should_stop, sizes))
    return results
