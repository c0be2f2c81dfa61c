"""The life of one wake-up, told as a story:

    claim_next_slice -> wake_another_worker -> perform_slice (micro-batches, each
    committed as it finishes, the lease kept alive by a heartbeat) -> finish_slice
    (give back what was not reached, settle the job, wake again if work was given back)

A duplicate or stale wake-up finds nothing to claim and returns at once. A slice that
breaks off keeps the attempt it spent (abandon_slice); one that passes its soft time
limit fails its unfinished items with `timeout` (time_out_slice).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from shared.ledger import Ledger, ResultRow, Slice
from shared.queue import send_wakeup
from shared.storage import output_key
from worker.batches import run_micro_batch
from worker.context import WorkerContext
from worker.runners.base import Cancelled

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 4


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
        with LeaseKeeper(ctx, slice_.lease_id):
            report = perform_slice(ctx, slice_)
    except SoftTimeLimitExceeded:
        time_out_slice(ctx, slice_)
        return SliceReport(slice_.job_id, len(slice_.items), stopped="soft time limit")
    except Exception as exc:
        abandon_slice(ctx, slice_, exc)
        raise
    finish_slice(ctx, slice_)
    return report


def claim_next_slice(ctx: WorkerContext, model: str) -> Slice | None:
    settings = ctx.settings
    return ctx.ledger.claim(model, owner=ctx.owner, max_items=settings.slice_max_items,
                            lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)


def wake_another_worker(ctx: WorkerContext, model: str) -> None:
    """While this worker runs its slice, let an idle one take the next (multi-GPU)."""
    if ctx.ledger.has_claimable_work(model):
        send_wakeup(ctx.celery, model)


def perform_slice(ctx: WorkerContext, slice_: Slice) -> SliceReport:
    spec = ctx.registry.get(slice_.model)
    report = SliceReport(slice_.job_id, len(slice_.items))
    if spec is None:
        error = RuntimeError(f"model {slice_.model!r} is not in this worker's registry")
        commit_results(ctx, slice_, [(item, error) for item in slice_.items], report)
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
            results = run_micro_batch(runner, spec, batch, slice_.params, should_stop)
        except Cancelled:
            report.stopped = "cancelled"
            break
        commit_results(ctx, slice_, results, report)
    return report


def commit_results(ctx: WorkerContext, slice_: Slice, results, report: SliceReport) -> None:
    """Write image files first (atomic, named by job and item only), then commit every
    row of the micro-batch in one transaction, conditional on the lease. A dropped
    database connection is retried: the writes are conditional, so a retry after a
    commit that did land changes nothing."""
    rows = []
    for item, outcome in results:
        if isinstance(outcome, Exception):
            rows.append(ResultRow(item.id, error=_error_text(outcome)))
        elif outcome.image_png is not None:
            key = output_key(slice_.job_id, item.index, "png")
            ctx.storage.put(key, outcome.image_png)
            rows.append(ResultRow(item.id, key=key))
        else:
            rows.append(ResultRow(item.id, text=outcome.text))
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            stored = ctx.ledger.record_results(slice_.lease_id, rows)
            break
        except OperationalError as exc:
            if attempt == COMMIT_ATTEMPTS:
                raise
            log.warning("result commit failed (%s); retrying", exc.orig)
            time.sleep(0.2 * attempt)
    report.succeeded += stored.succeeded
    report.failed += stored.failed
    report.lost += stored.lost


def _error_text(exc: Exception) -> str:
    text = str(exc)
    return text if text.startswith(("out_of_memory:", "timeout:")) else f"{type(exc).__name__}: {text}"


def finish_slice(ctx: WorkerContext, slice_: Slice) -> None:
    settle_and_continue(ctx, slice_, ctx.ledger.release(slice_))


def abandon_slice(ctx: WorkerContext, slice_: Slice, exc: Exception) -> None:
    log.exception("slice of job %s broke off", slice_.job_id)
    given_back = ctx.ledger.abandon(slice_, error=_error_text(exc), max_attempts=ctx.settings.max_attempts)
    settle_and_continue(ctx, slice_, given_back)


def time_out_slice(ctx: WorkerContext, slice_: Slice) -> None:
    limit = ctx.settings.slice_soft_time_limit
    log.warning("slice of job %s passed its soft time limit (%.0fs)", slice_.job_id, limit)
    ctx.ledger.time_out(slice_, f"timeout: the slice ran past its time limit of {limit:g}s")
    settle_and_continue(ctx, slice_, 0)


def settle_and_continue(ctx: WorkerContext, slice_: Slice, given_back: int) -> None:
    """Settle the job in its own transaction (after the results are committed), sweep
    files no row points to, and wake a worker for the items this slice gave back."""
    if ctx.ledger.settle(slice_.job_id) is not None:
        remove_orphaned_outputs(ctx.ledger, ctx.storage, slice_.job_id)
    if given_back:
        send_wakeup(ctx.celery, slice_.model)


def remove_orphaned_outputs(ledger: Ledger, storage, job_id: str) -> None:
    """A worker that died between writing a file and committing its row left a file no
    client can reach; once the job is final, remove the files of items without output."""
    for index in ledger.indices_without_output(job_id):
        storage.delete(output_key(job_id, index, "png"))


class LeaseKeeper:
    """Extends a slice's lease from a background thread while the slice runs, so a
    short lease (quick recovery after a crash) never expires under a live worker."""

    def __init__(self, ctx: WorkerContext, lease_id: str):
        self._settings = ctx.settings
        self._ledger = ctx.ledger
        self._lease_id = lease_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self._settings.heartbeat_seconds + 5)

    def _beat(self) -> None:
        while not self._stop.wait(self._settings.heartbeat_seconds):
            try:
                self._ledger.extend_lease(self._lease_id, self._settings.lease_seconds)
            except Exception as exc:  # a missed beat is retried at the next one
                log.warning("lease heartbeat failed: %s", exc)


class CancelWatch:
    """`should_stop()` for a running job: reads the cancel flag at most every
    `cancel_check_seconds`, so generation steps do not each cost a query."""

    def __init__(self, ctx: WorkerContext, job_id: str):
        self._ledger = ctx.ledger
        self._interval = ctx.settings.cancel_check_seconds
        self._job_id = job_id
        self._checked_at = float("-inf")
        self._cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._checked_at >= self._interval:
            self._checked_at = now
            try:
                self._cancelled = self._ledger.is_cancelling(self._job_id)
            except OperationalError as exc:  # the next check will see it
                log.warning("cancel check failed: %s", exc)
        return self._cancelled
