"""The runner contract: `setup()` once per process, `predict()` per micro-batch.

A runner turns a list of items (prompt + seed) and the job's parameters into one
output per item, in order. An item's output must depend only on its prompt, the
parameters and its seed, never on which other items share the micro-batch: that is
what makes a resumed, retried or re-split job give the same results. What a runner
controls is its randomness and its per-row logic; the model's arithmetic still
rounds differently in another batch shape (docs/determinism.md: on the CPU, 1 of
1,024 sampled texts differed alone and in a batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from shared.items import ItemInput  # noqa: F401  (re-exported: part of the runner contract)
from shared.progress import NO_PROGRESS, Progress
from shared.registry import ModelSpec
from shared.watch import watching


@dataclass(frozen=True)
class ItemOutput:
    text: str | None = None
    image_png: bytes | None = None


class Cancelled(Exception):
    """Raised inside `predict()` when `should_stop()` said the job is being cancelled."""


class Runner(Protocol):
    spec: ModelSpec

    def setup(self) -> None:
        """Load weights onto the device. Called once per process."""

    def predict(
        self,
        inputs: list[ItemInput],
        params: dict[str, Any],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[ItemOutput]:
        """One output per input, in order. `should_stop` is polled during generation.
        An item the model refuses to produce (a safety checker flagged its image) may
        have an exception in its place: that item fails with it, the others succeed."""


class BaseRunner:
    """What every runner does around its model call, written once: set up on first use,
    nothing to do for no items, and no start for a job that is being cancelled. A
    subclass loads in `setup()`, says whether it has in `loaded()`, and produces outputs
    in `generate()`."""

    progress: Progress = NO_PROGRESS  # during `generate`: call with step=, steps= or tokens= (see shared.progress)

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        self.spec = spec
        self.device = device

    def setup(self) -> None:
        raise NotImplementedError

    def loaded(self) -> bool:
        raise NotImplementedError

    def predict(
        self,
        inputs: list[ItemInput],
        params: dict[str, Any],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[ItemOutput]:
        if not self.loaded():
            self.setup()
        if not inputs:
            return []
        if should_stop is not None and should_stop():
            raise Cancelled("generation cancelled")
        with watching(inputs) as self.progress:
            try:
                return self.generate(inputs, params, should_stop)
            finally:
                self.progress = NO_PROGRESS

    def generate(
        self, inputs: list[ItemInput], params: dict[str, Any], should_stop: Callable[[], bool] | None
    ) -> list[ItemOutput]:
        raise NotImplementedError
