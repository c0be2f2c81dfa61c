"""The life of one wake-up, told as a story:

    (a pool process's first: the slices a dead one of this worker left leased go back,
    worker.predecessors) -> claim_next_slice -> announce_claim -> perform_slice (micro-batches, each
    committed while the model runs the next, the lease kept alive by a heartbeat) -> end_slice
    (the last micro-batch committed, then finish_slice: give back what was not reached, settle
    the jobs, wake again if work was given back; in the committer's thread, while the model
    runs the next slice) -> the next slice, while more is waiting and the wake-up's turn lasts (worker.turn)
       (claimed while the model runs this slice's last micro-batch: NextSlice)

A slice may hold items of several jobs of one model and tenant whose parameters differ
only in their seeds; they share micro-batches. A duplicate or stale wake-up finds
nothing to claim and returns at once. A slice that
breaks off keeps the attempt it spent (abandon_slice); one that passes its soft time
limit fails its unfinished items with `timeout` (time_out_slice).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from shared import watch
from shared.ledger import ResultRow, Slice
from shared.ledger.transactions import Ended
from shared.notices import notices_for
from shared.storage import output_key
from worker.batches import in_batch_order, run_micro_batch
from worker.context import WorkerContext
from worker.predecessors import release_dead_predecessors_once
from worker.runners.base import Cancelled
from worker.turn import Turn

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 4
TIMED_OUT = "soft time limit"


@dataclass
class SliceReport:
    job_ids: list[str]
    claimed: int
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    stopped: str | None = None
    ended: Ended | None = None  # settled with the last results (Ledger.record_results), or by finish_slice
    unsent: tuple[int, int] | None = None  # the last micro-batch's (succeeded, failed): sent with the end's notices
    last: list | None = None  # the last micro-batch's results, committed by end_slice

    def summary(self) -> dict:
        """What the wake-up task returns (its log line): the jobs and what became of the items."""
        return {name: value for name, value in self.__dict__.items() if name not in ("ended", "unsent", "last")}


def handle_wakeup(ctx: WorkerContext, model: str) -> SliceReport | None:
    """Take the wake-up, then run slices of `model` while more work is waiting and the
    wake-up's turn lasts (GENQ_WAKEUP_BUSY_SECONDS, longer while none of the worker's other
    models waits: worker.turn): a slice costs a claim instead of a message through the
    broker too. (Every claim that leaves work behind still wakes another worker.)
    Returns the last slice's report, None if there was nothing."""
    ctx.wakeups.taken(model)
    release_dead_predecessors_once(ctx)  # a pool process that died here left its slice leased
    turn = Turn(ctx, model)
    report, slice_ = None, claim_next_slice(ctx, model)
    while slice_ is not None:
        after = NextSlice(ctx, model, turn if slice_.more_waiting else None)
        try:
            report = run_slice(ctx, slice_, after)
        except BaseException:
            after.give_back()
            raise
        if report.stopped == TIMED_OUT:  # the hard limit follows: no more work for this process
            after.give_back()
            return report
        slice_ = after.take()
    ctx.committer.wait()  # the last slice has ended (end_slice) before the task does
    return report


def run_slice(ctx: WorkerContext, slice_: Slice, after: NextSlice | None = None) -> SliceReport:
    """Run the slice's micro-batches; its end (end_slice) is left to the committer's
    thread, so the model goes on to the next slice at once: the last micro-batch's
    commit, which settles jobs, was 11 ms a slice on PostgreSQL (2.5 on SQLite) with the
    model waiting. The report is complete once the committer has landed it. A suspect
    slice (an item that was in a slice that died) waits for that end first: were it to
    kill the process, the slice before would lose its last micro-batch, and the attempt
    of each of its items, for an item not theirs."""
    if slice_.suspect:  # it may kill this process: the slice before it has ended first
        ctx.committer.wait()
    announce_claim(ctx, slice_)
    ctx.heartbeat.hold(slice_.lease_id)  # let go where the slice ends
    try:
        with ctx.committer.in_order():  # every commit but the last landed after it
            report = perform_slice(ctx, slice_, after)
    except BaseException as exc:  # the slice stops here, not in end_slice
        ctx.heartbeat.let_go(slice_.lease_id)
        if isinstance(exc, SoftTimeLimitExceeded):
            time_out_slice(ctx, slice_)
            return SliceReport(slice_.job_ids, len(slice_.items), stopped=TIMED_OUT)
        if isinstance(exc, Exception):  # else the process is going: its lease expires
            abandon_slice(ctx, slice_, exc)
        raise
    ctx.committer.submit(end_slice, ctx, slice_, report)
    return report


def claim_next_slice(ctx: WorkerContext, model: str) -> Slice | None:
    settings = ctx.settings
    max_items = ctx.registry.slice_items(model, settings.slice_max_items)
    return ctx.ledger.claim(model, owner=ctx.owner, max_items=max_items, lease_seconds=settings.lease_seconds,
                            max_attempts=settings.max_attempts)


def announce_claim(ctx: WorkerContext, slice_: Slice) -> None:
    """In one round trip to Redis: say that the claim's jobs are running, count how long
    its items waited (/metrics), and, while more work waits, let an idle worker take the
    next slice (multi-GPU)."""
    notices = notices_for(ctx.settings.redis_url)
    waited = lambda pipe: watch.claimed(slice_.model, slice_.items, slice_.waited, pipe)  # noqa: E731
    if slice_.more_waiting:
        ctx.wakeups.send(slice_.model, also=lambda pipe: notices.publish(slice_.job_ids, pipe, also=waited))
    else:
        notices.publish(slice_.job_ids, also=waited)


def perform_slice(ctx: WorkerContext, slice_: Slice, after: NextSlice | None = None) -> SliceReport:
    spec = ctx.registry.get(slice_.model)
    report = SliceReport(slice_.job_ids, len(slice_.items))
    if spec is None:
        error = RuntimeError(f"model {slice_.model!r} is not in this worker's registry")
        commit_results(ctx, slice_, [(item, error) for item in slice_.items], report, last=True)
        return report
    runner = ctx.cache.get(spec)
    watch.slice_started()  # the busy clock of ETAs starts once the model is loaded (unless the worker was busy)
    cancels = CancelWatch(ctx, slice_.job_ids)
    deadline = time.monotonic() + ctx.settings.slice_max_seconds
    remaining = in_batch_order(runner, slice_.items, slice_.params)  # like lengths share a micro-batch
    while remaining:
        cancelling = cancels()
        remaining = [item for item in remaining if item.job_id not in cancelling]  # the release cancels them
        if not remaining:
            report.stopped = "cancelled"
            break
        if time.monotonic() > deadline:
            report.stopped = "slice time budget spent"
            break
        size = ctx.batch_sizes.size(spec, slice_.params)  # lowered by out-of-memory for these parameters
        batch, remaining = remaining[:size], remaining[size:]
        if not remaining and after is not None:  # the last micro-batch: the next slice is claimed meanwhile
            after.claim_early()
        try:
            results = run_micro_batch(runner, spec, batch, slice_.params, cancels.stops(batch), ctx.batch_sizes)
        except Cancelled:
            report.stopped = "cancelled"
            break
        if remaining:  # committed in a thread while the model runs the next micro-batch
            ctx.committer.submit(commit_results, ctx, slice_, results, report)
        else:  # the last may settle the slice's jobs: end_slice commits it, after the earlier ones
            report.last = results
    return report


def commit_results(ctx: WorkerContext, slice_: Slice, results, report: SliceReport, last: bool = False) -> None:
    """Write image files first (atomic, named by job and item only), then commit every
    row of the micro-batch in one transaction, conditional on the lease (in the
    committer's thread, but for the `last` micro-batch: see `worker.committer`). A dropped
    database connection is retried: the writes are conditional, so a retry after a
    commit that did land changes nothing. Watchers are notified after the commit, but
    for the slice's `last` micro-batch: the slice's end, a moment later, notifies for
    every job of the slice, and sends this batch's figures with it (`report.unsent`).
    When that batch holds every item the slice still holds, the slice's jobs are settled
    in its transaction (`report.ended`)."""
    rows = []
    for item, outcome in results:
        if isinstance(outcome, Exception):
            rows.append(ResultRow(item.id, error=_error_text(outcome), job_id=item.job_id))
        elif outcome.image_png is not None:
            key = output_key(item.job_id, item.index, "png")
            ctx.storage.put(key, outcome.image_png)
            rows.append(ResultRow(item.id, key=key, job_id=item.job_id))
        else:
            rows.append(ResultRow(item.id, text=outcome.text, job_id=item.job_id))
    holds_only_these = last and report.succeeded + report.failed + report.lost + len(rows) == report.claimed
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            stored = ctx.ledger.record_results(slice_.lease_id, rows, last_of=slice_ if holds_only_these else None)
            break
        except OperationalError as exc:
            if attempt == COMMIT_ATTEMPTS:
                raise
            log.warning("result commit failed (%s); retrying", exc.orig)
            time.sleep(0.2 * attempt)
    report.succeeded += stored.succeeded
    report.failed += stored.failed
    report.lost += stored.lost
    report.ended = stored.ended
    if last:
        report.unsent = (stored.succeeded, stored.failed)
        return
    watch.committed(slice_.model, stored.succeeded, stored.failed)  # throughput and /metrics counts
    notices_for(ctx.settings.redis_url).publish(item.job_id for item, _ in results)  # after the commit


def _error_text(exc: Exception) -> str:
    text = str(exc)
    coded = text.startswith(("out_of_memory:", "timeout:", "nsfw_content_detected:"))  # already says what
    return text if coded else f"{type(exc).__name__}: {text}"


def end_slice(ctx: WorkerContext, slice_: Slice, report: SliceReport) -> None:
    """In the committer's thread: commit the last micro-batch, then finish the slice. Its
    errors are its own (the slice is abandoned here, as run_slice would), never the next
    slice's, which the model is running meanwhile."""
    try:
        if report.last is not None:
            commit_results(ctx, slice_, report.last, report, last=True)
        finish_slice(ctx, slice_, report)
    except Exception as exc:
        try:
            abandon_slice(ctx, slice_, exc)
        except Exception:  # the lease expires instead, and the reconciler gives the items back
            log.exception("abandoning the slice of jobs %s failed", ", ".join(slice_.job_ids))
    finally:
        report.last = None
        ctx.heartbeat.let_go(slice_.lease_id)


def finish_slice(ctx: WorkerContext, slice_: Slice, report: SliceReport) -> None:
    if report.ended is None:  # not settled with the last results: give back what is held, settle
        holds_items = report.succeeded + report.failed + report.lost < report.claimed
        report.ended = ctx.ledger.release(slice_, holds_items=holds_items)
    continue_after(ctx, slice_, report.ended, figures=report.unsent)


def abandon_slice(ctx: WorkerContext, slice_: Slice, exc: Exception) -> None:
    log.exception("slice of jobs %s broke off", ", ".join(slice_.job_ids))
    continue_after(ctx, slice_, ctx.ledger.abandon(slice_, error=_error_text(exc), max_attempts=ctx.settings.max_attempts))


def time_out_slice(ctx: WorkerContext, slice_: Slice) -> None:
    limit = ctx.settings.slice_soft_time_limit
    log.warning("slice of jobs %s passed its soft time limit (%.0fs)", ", ".join(slice_.job_ids), limit)
    continue_after(ctx, slice_, ctx.ledger.time_out(slice_, f"timeout: the slice ran past its time limit of {limit:g}s"))


def continue_after(ctx: WorkerContext, slice_: Slice, ended: Ended, figures: tuple[int, int] | None = None) -> None:
    """Once the slice is given back and its jobs settled (one transaction, after the
    results were committed): sweep files no row points to, and wake a worker for the
    items this slice gave back. `figures`, the last micro-batch's (succeeded, failed),
    go to the watchers on the notices' round trip."""
    also = None if figures is None else (lambda pipe: watch.committed(slice_.model, *figures, pipe=pipe))
    # settled, cancelled or given back: committed; the settled ones also wake the batch finalizer
    notices_for(ctx.settings.redis_url).publish_ended(slice_.job_ids, ended.settled, also=also)
    remove_orphaned_outputs(ctx.storage, ended.settled)
    if ended.given_back:
        ctx.wakeups.send(slice_.model)


def remove_orphaned_outputs(storage, settled: dict[str, list[int]]) -> None:
    """A worker that died between writing a file and committing its row left a file no
    client can reach; once the job is final, remove the files of items without output."""
    for job_id, indices in settled.items():
        for index in indices:
            storage.delete(output_key(job_id, index, "png"))


class CancelWatch:
    """Which of a slice's jobs are being cancelled: reads the ledger at most every
    `cancel_check_seconds`, so generation steps do not each cost a query."""

    def __init__(self, ctx: WorkerContext, job_ids: list[str]):
        self._ledger = ctx.ledger
        self._interval = ctx.settings.cancel_check_seconds
        self._job_ids = job_ids
        self._checked_at = time.monotonic()  # the claim took jobs that were not being cancelled
        self._cancelling: set[str] = set()

    def __call__(self) -> set[str]:
        now = time.monotonic()
        if len(self._cancelling) < len(self._job_ids) and now - self._checked_at >= self._interval:
            self._checked_at = now
            try:
                self._cancelling = self._ledger.cancelling_jobs(self._job_ids)
            except OperationalError as exc:  # the next check will see it
                log.warning("cancel check failed: %s", exc)
        return self._cancelling

    def stops(self, batch) -> Callable[[], bool]:
        """`should_stop()` for a micro-batch: true once every job in it is being cancelled
        (a batch shared with a live job runs to its end)."""
        jobs = {item.job_id for item in batch}
        return lambda: jobs <= self()


class NextSlice:
    """The wake-up's next slice: claimed in the committer's thread, after the commits in
    flight, while the model runs this slice's last micro-batch (`claim_early`), its lease
    kept from then on; or, where the slice ended before its last micro-batch, when it is
    asked for (`take`). Either only while the wake-up's `turn` lasts (None: no more work
    was waiting at this slice's claim). With a model that takes time but no CPU (slices of 64 items of
    2 ms each), the claim was ~7 % of the slice loop on PostgreSQL (10 ms a slice)."""

    def __init__(self, ctx: WorkerContext, model: str, turn: Turn | None):
        self._ctx, self._model, self._turn = ctx, model, turn
        self._claim: Future | None = None

    def claim_early(self) -> None:
        if self._claim is None and self._lasts():
            self._claim = self._ctx.committer.then(self._claim_and_hold)

    def take(self) -> Slice | None:
        if self._claim is None:
            return claim_next_slice(self._ctx, self._model) if self._lasts() else None
        try:
            return self._claim.result()
        except Exception:  # the wake-up ends; the wake-up its claim sent, or the reconciler, comes next
            log.exception("claiming the next slice of %s failed", self._model)
            return None

    def give_back(self) -> None:
        """The slice before it broke off or timed out: a slice claimed early goes back
        unrun, its items pending again without spending an attempt."""
        if self._claim is None:
            return
        slice_ = self.take()
        if slice_ is None:
            return
        try:
            continue_after(self._ctx, slice_, self._ctx.ledger.release(slice_, holds_items=True))
        except Exception:  # its lease expires instead
            log.exception("giving back the next slice of jobs %s failed", ", ".join(slice_.job_ids))
        finally:
            self._ctx.heartbeat.let_go(slice_.lease_id)

    def _lasts(self) -> bool:
        return self._turn is not None and self._turn.lasts()

    def _claim_and_hold(self) -> Slice | None:
        slice_ = claim_next_slice(self._ctx, self._model)
        if slice_ is not None:
            self._ctx.heartbeat.hold(slice_.lease_id)
        return slice_
