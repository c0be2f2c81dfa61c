"""A runner that returns at once, so a benchmark measures the service around the model
(HTTP, ledger, broker, claims) and nothing of the model itself.

On first setup it prints where the worker imported `worker` from, so a benchmark run
against another checkout (a baseline worktree) can show which code it measured.
"""
from __future__ import annotations

import sys

from worker.runners.base import ItemOutput


class NoopRunner:
    def __init__(self, spec, device="cpu"):
        self.spec = spec
        self.device = device

    def setup(self) -> None:
        import worker

        print(f"noop runner: worker code from {worker.__file__}", file=sys.stderr, flush=True)

    def predict(self, inputs, params, should_stop=None):
        """One output per input, in order, depending only on the item (the contract)."""
        return [ItemOutput(text=f"noop:{item.index}:{item.seed}") for item in inputs]
