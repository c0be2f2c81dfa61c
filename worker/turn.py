"""How long one wake-up keeps its worker on one model (its turn).

A wake-up runs slices of its model while more is waiting, for GENQ_WAKEUP_BUSY_SECONDS.
Past that budget it goes on only while no other model this worker serves has a wake-up
queued: ending a turn costs a round trip through the broker before the next slice
(Celery with acks_late and a prefetch of one took 20-300 ms a new wake-up on this
machine), which is worth paying only to give another model its turn. However long it
goes on, no slice starts later than GENQ_SLICE_MAX_SECONDS after the wake-up began, so
the wake-up task stays far inside its time limit.
"""
from __future__ import annotations

import time

from worker.context import WorkerContext


class Turn:
    def __init__(self, ctx: WorkerContext, model: str):
        self._ctx, self._model = ctx, model
        start = time.monotonic()
        self._busy = ctx.settings.wakeup_busy_seconds
        self._until = start + self._busy
        self._cap = start + max(self._busy, ctx.settings.slice_max_seconds)

    def lasts(self) -> bool:
        """May the wake-up start (or claim) another slice now? Past the budget, asks Redis
        whether another model of this worker waits, and extends the turn by a budget if none does."""
        now = time.monotonic()
        if now < self._until:
            return True
        if self._busy <= 0 or now >= self._cap or self._others_waiting():
            return False
        self._until = min(self._cap, now + self._busy)
        return True

    def _others_waiting(self) -> bool:
        served = self._ctx.models or tuple(self._ctx.registry.names())
        others = [model for model in served if model != self._model]
        return bool(others) and bool(self._ctx.wakeups.queued(others))
