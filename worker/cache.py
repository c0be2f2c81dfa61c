"""The model cache: each model is loaded once per worker process and kept warm.

What stays loaded is budgeted by memory, not by a count of models: on a GPU a model is
loaded only when the device's free memory (less `GENQ_DEVICE_MEMORY_RESERVE` of it, left
for activations) holds its weight files; on the CPU the loaded weights stay within
`GENQ_MODEL_CACHE_BYTES` (0: no byte limit). The least recently used model is unloaded
to make room, before a load (by the estimate from its files) and after it (by what it
really holds). An out-of-memory error while loading unloads the next model and tries
again, instead of failing the slice and spending its items' attempts; only a model
that does not fit alone fails. `GENQ_WORKER_MAX_MODELS` still caps the count. A sticky
CUDA error while loading raises `DeviceBroken`, as one in a micro-batch does.

A model whose weights are not on this machine (a Hub id missing from the local cache, or
a partial download of it) raises `ModelUnavailable` naming what to fetch, before any
memory is made for it; the web process refuses such jobs up front where it sees the
same cache, so this is what a worker on a host without the weights reports.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

from shared import watch
from shared.errors import ModelUnavailable
from shared.model_files import model_directory, weights_of
from shared.processes import freeze_heap, thaw_heap
from shared.registry import ModelSpec
from worker.device import DeviceBroken, configure_torch, is_sticky_device_error
from worker.memory import (
    OutOfMemory,
    detached,
    device_memory,
    estimate_weight_bytes,
    free_device_memory,
    is_out_of_memory,
    weight_bytes,
)
from worker.runners.base import Runner

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, device: str, capacity: int = 2, torch_threads: int = 0, budget_bytes: int = 0,
                 device_reserve: float = 0.2):
        self.device = device
        self.capacity = capacity
        self.torch_threads = torch_threads
        self.budget_bytes = budget_bytes
        self.device_reserve = device_reserve
        self._runners: OrderedDict[str, Runner] = OrderedDict()
        self.sizes: dict[str, int] = {}  # bytes each loaded model holds
        self.loads: dict[str, int] = {}
        self.freeze_loaded = False  # set in a worker's pool process (worker.app): see shared.processes.freeze_heap

    @classmethod
    def from_settings(cls, device: str, settings) -> "ModelCache":
        return cls(device, capacity=settings.worker_max_models, torch_threads=settings.torch_threads,
                   budget_bytes=settings.model_cache_bytes, device_reserve=settings.device_memory_reserve)

    def loaded(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        return list(self._runners)

    def get(self, spec: ModelSpec) -> Runner:
        runner = self._runners.get(spec.name)
        if runner is not None:
            self._runners.move_to_end(spec.name)
            return runner
        check_weights(spec)
        needed = estimate_weight_bytes(model_directory(spec), spec.variant)
        while self._runners and (len(self._runners) >= self.capacity or not self._fits(needed)):
            self._evict_oldest()
        runner = self._load_making_room(spec)
        self._runners[spec.name] = runner
        self.sizes[spec.name] = weight_bytes(runner)
        while len(self._runners) > 1 and not self._fits(0):
            self._evict_oldest()
        return runner

    def _fits(self, more: int) -> bool:
        """Whether `more` bytes of weights fit beside what is loaded now."""
        memory = device_memory(self.device)
        if memory is not None:
            free, total = memory
            return free - self.device_reserve * total >= more
        return not self.budget_bytes or sum(self.sizes.values()) + more <= self.budget_bytes

    def _load_making_room(self, spec: ModelSpec) -> Runner:
        while True:
            runner, error = self._try_load(spec)
            if runner is not None:
                return runner
            free_device_memory()  # out of the handler: the half-loaded model can go now
            if not self._runners:
                raise OutOfMemory(f"out_of_memory: model {spec.name} does not fit on {self.device} alone ({error})")
            log.warning("out of memory loading %s (%s); unloading a model and trying again", spec.name, error)
            self._evict_oldest()

    def _try_load(self, spec: ModelSpec) -> tuple[Runner | None, BaseException | None]:
        """The set-up runner, or (None, the out-of-memory error without its traceback)."""
        try:
            return self._load(spec), None
        except Exception as exc:
            if is_sticky_device_error(exc) and not is_out_of_memory(exc):
                raise DeviceBroken(f"device error while loading {spec.name}, this worker process must be replaced: {exc}") from exc
            if not is_out_of_memory(exc):
                raise
            return None, detached(exc)

    def _load(self, spec: ModelSpec) -> Runner:
        from worker.runners import build_runner

        started = time.monotonic()
        configure_torch(self.device, self.torch_threads)  # threads; TF32 on a GPU
        runner = build_runner(spec, self.device)
        runner.setup()
        if self.freeze_loaded:
            freeze_heap()  # the model stays: full collections need not walk its objects
        self.loads[spec.name] = self.loads.get(spec.name, 0) + 1
        log.info("loaded model %s on %s in %.2fs", spec.name, self.device, time.monotonic() - started)
        watch.model_loaded(spec.name, time.monotonic() - started)  # for /metrics
        return runner

    def _evict_oldest(self) -> None:
        name, _runner = self._runners.popitem(last=False)
        size = self.sizes.pop(name, 0)
        log.info("unloaded model %s (%.1f MB) to make room", name, size / 2**20)
        del _runner
        if self.freeze_loaded:
            thaw_heap()  # its cycles (and their device memory) must be collectable; the next load freezes again
        free_device_memory()


def check_weights(spec: ModelSpec) -> None:
    """Raise `ModelUnavailable` when the model's weights are not on this machine."""
    weights = weights_of(spec)
    if weights.available:
        return
    fetch = f"; on a machine with network access run `{weights.fetch}` and copy its Hugging Face cache here" \
        if weights.fetch else ""
    raise ModelUnavailable(f"model {spec.name} cannot be loaded on this worker: {weights.reason} "
                           f"({weights.where}){fetch}")
