"""The life of one wake-up, told as a story:

    claim_next_slice -> wake_another_worker -> perform_slice (micro-batches,
    each committed as it finishes) -> finish_slice (release leftovers, settle the
    job, wake again if work was given back)

A duplicate or stale wake-up finds nothing to claim and returns at once.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from shared import lifecycle
from shared.db import session_scope
from shared.lifecycle import ClaimedItem, Slice
from shared.queue import send_wakeup
from shared.storage import output_key
from worker.context import WorkerContext
from worker.runners.base import Cancelled, ItemInput, ItemOutput, Runner

log = logging.getLogger(__name__)


@dataclass
class SliceReport:
    job_id: str
    claimed: int
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    stopped: str | None = None


def handle_wakeup(ctx: WorkerContext, model: str) -> SliceReport | None:
    slice_ = claim_next_slice(ctx, model)
    if slice_ is None:
        return None
    wake_another_worker(ctx, model)
    try:
        report = perform_slice(ctx, slice_)
    except Exception as exc:
        abandon_slice(ctx, slice_, exc)
        raise
    finish_slice(ctx, slice_)
    return report


def claim_next_slice(ctx: WorkerContext, model: str) -> Slice | None:
    settings = ctx.settings
    with session_scope(settings.database_url) as session:
        lifecycle.release_expired_leases(session, max_attempts=settings.max_attempts)
        return lifecycle.claim_slice(
            session, model=model, owner=ctx.owner, max_items=settings.slice_max_items, lease_seconds=settings.lease_seconds
        )


def wake_another_worker(ctx: WorkerContext, model: str) -> None:
    """While this worker runs its slice, let an idle one take the next (multi-GPU)."""
    with session_scope(ctx.settings.database_url) as session:
        more = lifecycle.has_claimable_work(session, model)
    if more:
        send_wakeup(ctx.celery, model)


def perform_slice(ctx: WorkerContext, slice_: Slice) -> SliceReport:
    spec = ctx.registry.get(slice_.model)
    report = SliceReport(slice_.job_id, len(slice_.items))
    if spec is None:
        _commit_failures(ctx, slice_, slice_.items, f"model {slice_.model!r} is not in this worker's registry", report)
        return report
    runner = ctx.cache.get(spec)
    should_stop = CancelWatch(ctx, slice_.job_id)
    deadline = time.monotonic() + ctx.settings.slice_max_seconds
    remaining = list(slice_.items)
    while remaining:
        if should_stop():
            report.stopped = "cancelled"
            break
        if time.monotonic() > deadline:
            report.stopped = "slice time budget spent"
            break
        batch, remaining = remaining[: spec.micro_batch_size], remaining[spec.micro_batch_size :]
        try:
            results = run_micro_batch(runner, batch, slice_.params, should_stop)
        except Cancelled:
            report.stopped = "cancelled"
            break
        commit_results(ctx, slice_, results, report)
    return report


def run_micro_batch(
    runner: Runner, batch: list[ClaimedItem], params: dict, should_stop: Callable[[], bool]
) -> list[tuple[ClaimedItem, ItemOutput | Exception]]:
    """Run a micro-batch; if it fails, run its items one by one so one bad item fails alone."""
    inputs = [ItemInput(item.index, item.prompt, item.seed) for item in batch]
    try:
        return list(zip(batch, runner.predict(inputs, params, should_stop)))
    except Cancelled:
        raise
    except Exception as exc:
        if len(batch) == 1:
            return [(batch[0], exc)]
        log.warning("micro-batch of %d failed (%s); running its items one by one", len(batch), exc)
    results: list[tuple[ClaimedItem, ItemOutput | Exception]] = []
    for item in batch:
        results.extend(run_micro_batch(runner, [item], params, should_stop))
    return results


def commit_results(ctx: WorkerContext, slice_: Slice, results, report: SliceReport) -> None:
    """Write image files first (atomic, deterministic names), then commit every row of the
    micro-batch in one transaction, conditional on the lease, and extend the lease."""
    rows = []
    for item, outcome in results:
        if isinstance(outcome, Exception):
            rows.append((item, None, None, f"{type(outcome).__name__}: {outcome}"))
        elif outcome.image_png is not None:
            key = output_key(slice_.job_id, item.index, "png")
            ctx.storage.put(key, outcome.image_png)
            rows.append((item, None, key, None))
        else:
            rows.append((item, outcome.text, None, None))
    with session_scope(ctx.settings.database_url) as session:
        for item, text, key, error in rows:
            if error is not None:
                stored = lifecycle.record_item_failure(session, slice_.lease_id, item.id, error)
                report.failed += stored
            else:
                stored = lifecycle.record_item_success(session, slice_.lease_id, item.id, text=text, key=key)
                report.succeeded += stored
            report.lost += not stored
        lifecycle.extend_lease(session, slice_.lease_id, ctx.settings.lease_seconds)


def _commit_failures(ctx: WorkerContext, slice_: Slice, items, error: str, report: SliceReport) -> None:
    commit_results(ctx, slice_, [(item, RuntimeError(error)) for item in items], report)


def finish_slice(ctx: WorkerContext, slice_: Slice) -> None:
    with session_scope(ctx.settings.database_url) as session:
        given_back = lifecycle.release_slice(session, slice_.lease_id, slice_.job_id)
    settle_and_continue(ctx, slice_, given_back)


def abandon_slice(ctx: WorkerContext, slice_: Slice, exc: Exception) -> None:
    log.exception("slice of job %s broke off", slice_.job_id)
    with session_scope(ctx.settings.database_url) as session:
        given_back = lifecycle.abandon_slice(
            session, slice_.lease_id, slice_.job_id, error=f"{type(exc).__name__}: {exc}", max_attempts=ctx.settings.max_attempts
        )
    settle_and_continue(ctx, slice_, given_back)


def settle_and_continue(ctx: WorkerContext, slice_: Slice, given_back: int) -> None:
    """Settle the job in its own transaction (after the results are committed), and wake
    a worker for the items this slice gave back."""
    with session_scope(ctx.settings.database_url) as session:
        lifecycle.settle_job(session, slice_.job_id)
    if given_back:
        send_wakeup(ctx.celery, slice_.model)


class CancelWatch:
    """`should_stop()` for a running job: reads the cancel flag at most every
    `cancel_check_seconds`, so generation steps do not each cost a query."""

    def __init__(self, ctx: WorkerContext, job_id: str):
        self._url = ctx.settings.database_url
        self._interval = ctx.settings.cancel_check_seconds
        self._job_id = job_id
        self._checked_at = float("-inf")
        self._cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._checked_at >= self._interval:
            self._checked_at = now
            with session_scope(self._url) as session:
                self._cancelled = lifecycle.is_cancelling(session, self._job_id)
        return self._cancelled
