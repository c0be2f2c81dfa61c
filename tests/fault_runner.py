"""A runner for fault tests, registered only in tests, behind the same contract as the
real runners. What it does for an item is named by the item's prompt:

    ok ...        "ok:<prompt>:<seed>"
    slow ...      sleeps `slow_seconds` (polling should_stop), then as ok
    raise         raises RuntimeError
    crash         SIGKILLs its own process (the OOM killer's stand-in)
    hang          sleeps for an hour (until a time limit interrupts it)
    oom ...       raises torch.cuda.OutOfMemoryError when the micro-batch holds more
                  than `oom_above` items
    oom-always    raises torch.cuda.OutOfMemoryError at any micro-batch size
    cuda-error    raises a sticky CUDA error ("CUDA error: an illegal memory access was
                  encountered"); with option `cuda_error_flag`, only while that file does
                  not exist (it is created on the way), so a fresh process succeeds

Out-of-memory errors are raised while the runner holds a tensor (an activation's
stand-in) whose weak reference goes to `FaultRunner.held`; each call records in
`FaultRunner.alive_at_call` whether a tensor of an earlier failed call was still alive.
Option `weights_mb` gives the runner that many MB of weights at setup; option
`load_oom_beside` makes setup raise out-of-memory while any other fault runner is loaded,
and `load_cuda_error` makes it raise a sticky CUDA error.

Every item it finishes is appended to the `journal` file (index, prompt, pid), so a
test can prove that nothing ran twice.
"""
from __future__ import annotations

import os
import signal
import time
import weakref
from pathlib import Path

from worker.runners.base import Cancelled, ItemOutput


class FaultRunner:
    held: list[weakref.ref] = []  # tensors that failed calls held when they raised
    alive_at_call: list[bool] = []  # per call: was a tensor of an earlier failed call still alive?
    loaded: "weakref.WeakSet[FaultRunner]" = weakref.WeakSet()

    def __init__(self, spec, device="cpu"):
        self.spec = spec
        self.options = spec.options
        self.weights = None

    def setup(self) -> None:
        import torch  # (OutOfMemoryError lives there, as in a real runner)

        if self.options.get("load_oom_beside") and any(other is not self for other in list(FaultRunner.loaded)):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected while loading {self.spec.name})")
        if self.options.get("load_cuda_error"):
            raise RuntimeError("CUDA error: uncorrectable ECC error encountered")
        self.weights = torch.zeros(int(float(self.options.get("weights_mb", 0)) * 2**20), dtype=torch.uint8)
        FaultRunner.loaded.add(self)

    def predict(self, inputs, params, should_stop=None):
        """Faults hit the whole model call (as a real batch fails as a whole); then each
        item is produced, slowly if asked, and journaled."""
        FaultRunner.alive_at_call.append(any(ref() is not None for ref in FaultRunner.held))
        for item in inputs:
            self._fail_if_asked(item, len(inputs))
        return [self._one(item, should_stop) for item in inputs]

    def _fail_if_asked(self, item, batch_size):
        import torch

        word = item.prompt.split()[0]
        if word == "oom-always" or (word == "oom" and batch_size > self.options.get("oom_above", 0)):
            activations = torch.ones(batch_size, 1024)  # what a traceback would keep alive
            FaultRunner.held.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected at micro-batch {batch_size})")
        if word == "cuda-error":
            self._sticky_error()
        if word == "raise":
            raise RuntimeError(f"injected failure on item {item.index}")
        if word == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if word == "hang":
            time.sleep(3600)

    def _sticky_error(self):
        flag = self.options.get("cuda_error_flag")
        if flag and Path(flag).exists():
            return
        if flag:
            Path(flag).touch()
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def _one(self, item, should_stop):
        if item.prompt.split()[0] == "slow":
            self._sleep(float(self.options.get("slow_seconds", 0.5)), should_stop)
        self._journal(item)
        return ItemOutput(text=f"ok:{item.prompt}:{item.seed}")

    @staticmethod
    def _sleep(seconds, should_stop):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled")
            time.sleep(0.02)

    def _journal(self, item):
        path = self.options.get("journal")
        if path:
            with open(path, "a") as journal:
                journal.write(f"{item.index}\t{item.prompt}\t{os.getpid()}\n")


def journal_entries(path: Path) -> list[tuple[int, str, int]]:
    if not Path(path).exists():
        return []
    rows = [line.split("\t") for line in Path(path).read_text().splitlines()]
    return [(int(index), prompt, int(pid)) for index, prompt, pid in rows]
