"""A runner that returns at once, so a benchmark measures the service around the model
(HTTP, ledger, broker, claims) and nothing of the model itself. With the registry option
`sleep_ms_per_item` it sleeps that long per item instead (a model that takes time but
no CPU: bench/polls.py uses it to keep a large job running while it measures polls).

On first setup it prints where the worker imported `worker` from, so a benchmark run
against another checkout (a baseline worktree) can show which code it measured.
"""
from __future__ import annotations

import sys
import time

from worker.runners.base import ItemOutput


class NoopRunner:
    def __init__(self, spec, device="cpu"):
        self.spec = spec
        self.device = device
        self.sleep_s_per_item = float(spec.options.get("sleep_ms_per_item", 0)) / 1000

    def setup(self) -> None:
        import worker

        print(f"noop runner: worker code from {worker.__file__}", file=sys.stderr, flush=True)

    def predict(self, inputs, params, should_stop=None):
        """One output per input, in order, depending only on the item (the contract)."""
        if self.sleep_s_per_item:
            time.sleep(self.sleep_s_per_item * len(inputs))
        return [ItemOutput(text=f"noop:{item.index}:{item.seed}") for item in inputs]
