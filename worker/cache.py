"""The model cache: each model is loaded once per worker process and kept warm.

At most `capacity` models stay loaded; the least recently used one is dropped first.
"""
from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict

from shared.registry import ModelSpec
from worker.runners.base import Runner

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, device: str, capacity: int = 2, torch_threads: int = 0):
        self.device = device
        self.capacity = capacity
        self.torch_threads = torch_threads
        self._runners: OrderedDict[str, Runner] = OrderedDict()
        self.loads: dict[str, int] = {}

    def get(self, spec: ModelSpec) -> Runner:
        runner = self._runners.get(spec.name)
        if runner is not None:
            self._runners.move_to_end(spec.name)
            return runner
        while len(self._runners) >= self.capacity:
            self._evict_oldest()
        runner = self._load(spec)
        self._runners[spec.name] = runner
        return runner

    def _load(self, spec: ModelSpec) -> Runner:
        from worker.runners import build_runner

        started = time.monotonic()
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        runner = build_runner(spec, self.device)
        runner.setup()
        self.loads[spec.name] = self.loads.get(spec.name, 0) + 1
        log.info("loaded model %s on %s in %.2fs", spec.name, self.device, time.monotonic() - started)
        return runner

    def _evict_oldest(self) -> None:
        name, _runner = self._runners.popitem(last=False)
        log.info("unloaded model %s to make room", name)
        del _runner
        gc.collect()
        _empty_device_cache()


def _empty_device_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
