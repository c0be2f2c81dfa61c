"""Runners for bench/gpu_check.py, loaded by real worker processes through the registry
(`runner: bench.gpu_runners:...`). Each item's text is a JSON report of what the
process saw, which the check reads back through the API.

`MemoryRunner` allocates one activation per item, in turn, on its device (on a GPU
`item_fraction` of the device's memory each, on the CPU `item_mb` MB), so a micro-batch
too big for the device really runs out of memory part-way, holding what it allocated
until then. On the CPU the device is simulated: past `budget_mb` in all, the next
allocation raises torch's out-of-memory error instead. Every call reports the bytes allocated on the device when
it started against the bytes the runner holds between calls (its baseline): a retry
that starts above the baseline would be running beside the failed call's tensors.

`StickyErrorRunner` breaks its process's CUDA context once (a real device-side assert
on a GPU; on the CPU the message of an illegal memory access), marking `flag` first so
that the fresh process that replaces it runs the items.
"""
from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

from worker.runners.base import ItemOutput

MB = 2**20


class MemoryRunner:
    def __init__(self, spec, device="cpu"):
        self.spec, self.device, self.options = spec, device, spec.options
        self.weights = None
        self.item_bytes = 0
        self.baseline = 0
        self.failed_activations: list[weakref.ref] = []

    def setup(self) -> None:
        import torch

        self.weights = torch.zeros(16 * MB, dtype=torch.uint8, device=self.device)  # a model's stand-in
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            self.item_bytes = int(total * float(self.options.get("item_fraction", 0.15)))
        else:
            self.item_bytes = int(float(self.options.get("item_mb", 8)) * MB)
        self.baseline = self._allocated()

    def _allocated(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            return int(torch.cuda.memory_allocated())
        return sum(ref().untyped_storage().nbytes() for ref in self.failed_activations if ref() is not None) + (
            self.weights.untyped_storage().nbytes())

    def predict(self, inputs, params, should_stop=None):
        if self.weights is None:
            self.setup()
        at_start = self._allocated()
        self.failed_activations = [ref for ref in self.failed_activations if ref() is not None]
        stale = bool(self.failed_activations)  # an earlier call's activations, still held by someone
        held = []  # one activation per item, allocated in turn as a model's layers would
        for _ in inputs:
            held.append(self._activation())
            self.failed_activations.append(weakref.ref(held[-1]))
        for activation in held:
            activation.fill_(1)
        del held
        report = {"batch": len(inputs), "pid": os.getpid(), "above_baseline_at_start": at_start - self.baseline,
                  "failed_call_alive_at_start": stale}
        return [ItemOutput(text=json.dumps({**report, "index": item.index})) for item in inputs]

    def _activation(self):
        """`item_bytes` on the device; on the CPU, out of memory past `budget_mb` in all."""
        import torch

        if not self.device.startswith("cuda"):
            budget = float(self.options.get("budget_mb", 64)) * MB
            live = sum(1 for ref in self.failed_activations if ref() is not None)
            if (live + 1) * self.item_bytes > budget:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (simulated on the CPU: {live + 1} activations of {self.item_bytes // MB} MB "
                    f"over a budget of {budget / MB:g} MB)")
        return torch.empty(self.item_bytes, dtype=torch.uint8, device=self.device)


class StickyErrorRunner:
    def __init__(self, spec, device="cpu"):
        self.spec, self.device, self.options = spec, device, spec.options

    def setup(self) -> None:
        return None

    def predict(self, inputs, params, should_stop=None):
        flag = Path(self.options["flag"])
        if not flag.exists():
            flag.touch()
            self._break_the_context()
        return [ItemOutput(text=json.dumps({"pid": os.getpid(), "index": item.index})) for item in inputs]

    def _break_the_context(self) -> None:
        import torch

        if not self.device.startswith("cuda"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated on the CPU)")
        values = torch.zeros(4, device=self.device)
        index = torch.tensor([1 << 20], device=self.device)
        values[index] += 1  # out of bounds: a device-side assert, which poisons the context
        torch.cuda.synchronize()
