"""An OpenAI batch's lifecycle; the only code that changes a batch's `status`.

    validating -> failed                                   (the input file is refused whole)
    validating -> in_progress -> finalizing -> completed   (or expired, past its window)
                  in_progress -> cancelling -> cancelled

A batch is genq jobs underneath: one per model, number of choices `n` and parameter set
(a job has one set of parameters), each of at most GENQ_MAX_ITEMS_PER_JOB items, so
fairness, priority, leases, retries and cancel are the ledger's. While they run, a
batch's request counts are read from its jobs' item counts; once they have all finished,
its output and error files are written and the counts become exact.

Who writes the files: the reconciler process (`start_thread`: `advance_batches` every
GENQ_BATCH_POLL_SECONDS, and when a worker says a job settled), not the web process on a read. Writing a 50,000-line output
takes seconds and must happen once: in a poll it would hold a web thread, race other
polls of the same batch and die with a client that hangs up. The reconciler already
sweeps unfinished work with conditional updates, has the storage, and expires files; a
thread of its own, rather than its passes, keeps a finished batch from waiting a whole
GENQ_RECONCILE_INTERVAL_SECONDS (one indexed query per tick while nothing is ready).
The files' ids derive from the batch's, so a finalization that dies half-way is simply
done again by the next tick.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from shared import ledger
from shared.db import session_factory, transaction
from shared.errors import ConfigError, InvalidRequest
from shared.model_files import TokenCounter
from shared.notices import follow_settled
from shared.openai_files import remove_expired_files
from shared.openai_orm import (
    OPEN_BATCH_STATUSES,
    BatchStatus,
    FilePurpose,
    OpenAIBatch,
    OpenAIBatchJob,
    OpenAIBatchRequest,
    OpenAIFile,
)
from shared.openai_output import derived_file_id, write_batch_files
from shared.orm import Job, utcnow
from shared.registry import load_registry
from shared.states import UNFINISHED_JOB_STATES

log = logging.getLogger(__name__)
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
STOP_CHUNK = 500  # job ids per statement when a batch stops: well within SQLite's bound-parameter limit


class BatchNotCancellable(InvalidRequest):
    """400, not 409: the SDK retries 409, and a finished batch stays finished."""

    code = "batch_not_cancellable"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


@dataclass
class RequestPlan:
    line: int
    custom_id: str
    inputs: list[tuple[str, int]]  # n (prompt, seed): the request's items
    shaping: dict[str, Any] | None = None


@dataclass
class JobPlan:
    """Requests that can share one genq job: one model, `n` and parameter set."""

    model: str
    task: str
    params: dict[str, Any]
    n: int
    requests: list[RequestPlan] = field(default_factory=list)


def new_batch(tenant: str, endpoint: str, input_file_id: str, completion_window: str,
              metadata: dict[str, str] | None, output_expires_seconds: int | None) -> OpenAIBatch:
    return OpenAIBatch(id=new_batch_id(), tenant=tenant, endpoint=endpoint, input_file_id=input_file_id,
                       completion_window=completion_window, status=BatchStatus.VALIDATING.value,
                       batch_metadata=metadata, output_expires_seconds=output_expires_seconds, total_requests=0,
                       completed_requests=0, failed_requests=0, input_tokens=0, output_tokens=0, created_at=utcnow())


def fail_batch(batch: OpenAIBatch, errors: list[dict[str, Any]], total_requests: int) -> None:
    batch.status, batch.failed_at = BatchStatus.FAILED.value, utcnow()
    batch.errors = {"object": "list", "data": errors}
    batch.total_requests = total_requests


def start_batch(session: Session, batch: OpenAIBatch, plans: list[JobPlan], max_items_per_job: int) -> list[Job]:
    """Insert the batch's jobs (queued), their items and the custom_id -> items map."""
    session.add(batch)
    session.flush()
    jobs = []
    for plan in plans:
        per_job = max(1, max_items_per_job // plan.n)
        for start in range(0, len(plan.requests), per_job):
            chunk = plan.requests[start:start + per_job]
            job = ledger.create_job(session, model=plan.model, task=plan.task, params=plan.params, tenant=batch.tenant,
                                    inputs=[pair for request in chunk for pair in request.inputs])
            session.add(OpenAIBatchJob(batch_id=batch.id, job_id=job.id, n=plan.n, requests=len(chunk)))
            session.execute(OpenAIBatchRequest.__table__.insert(), [
                {"batch_id": batch.id, "line": request.line, "custom_id": request.custom_id, "job_id": job.id,
                 "first_index": k * plan.n, "n": plan.n, "model": plan.model, "shaping": request.shaping}
                for k, request in enumerate(chunk)])
            jobs.append(job)
    models = {plan.model for plan in plans}
    now = utcnow()
    batch.model = models.pop() if len(models) == 1 else None
    batch.total_requests = sum(len(plan.requests) for plan in plans)
    batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS.value, now
    batch.expires_at = batch.created_at + COMPLETION_WINDOWS[batch.completion_window]
    return jobs


def stop_batch(session: Session, batch: OpenAIBatch, reason: str) -> None:
    """Cancel the batch's unfinished jobs (what is done is kept for the output file): a
    few statements per `STOP_CHUNK` jobs, not per job (a batch whose lines differ in
    their parameters is a job per parameter set)."""
    job_ids = session.scalars(select(Job.id).join(OpenAIBatchJob, OpenAIBatchJob.job_id == Job.id)
                              .where(OpenAIBatchJob.batch_id == batch.id, Job.state.in_(UNFINISHED_JOB_STATES))).all()
    for start in range(0, len(job_ids), STOP_CHUNK):
        ledger.cancel_jobs(session, list(job_ids[start:start + STOP_CHUNK]))
    batch.stop_reason = reason


def cancel_batch(session: Session, batch: OpenAIBatch) -> OpenAIBatch:
    if batch.status in (BatchStatus.CANCELLING.value, BatchStatus.CANCELLED.value):
        return batch
    if batch.status != BatchStatus.IN_PROGRESS.value:
        raise BatchNotCancellable(f"batch {batch.id} is {batch.status}; only a batch in progress can be cancelled",
                                  field="batch_id")
    stop_batch(session, batch, "cancelled")
    batch.status, batch.cancelling_at = BatchStatus.CANCELLING.value, utcnow()
    return batch


def request_counts(session: Session, batches: list[OpenAIBatch]) -> dict[str, tuple[int, int]]:
    """(completed, failed) requests of each batch. Exact once finished; while it runs,
    read from its jobs' item counts (one statement for all): a request of `n` items is
    counted completed when `n` items of its job have succeeded, failed when any failed."""
    counts = {batch.id: (batch.completed_requests, batch.failed_requests) for batch in batches}
    running = [batch.id for batch in batches if batch.status in OPEN_BATCH_STATUSES]
    if not running:
        return counts
    links = session.scalars(select(OpenAIBatchJob).where(OpenAIBatchJob.batch_id.in_(running))).all()
    items = ledger.item_counts(session, [link.job_id for link in links])
    for batch_id in running:
        counts[batch_id] = (0, 0)
    for link in links:
        job = items[link.job_id]
        completed = min(link.requests, job.succeeded // link.n)
        failed = min(link.requests - completed, math.ceil((job.failed + job.cancelled) / link.n))
        done, bad = counts[link.batch_id]
        counts[link.batch_id] = (done + completed, bad + failed)
    return counts


# --- the reconciler's part ------------------------------------------------------------------
WAKE_GAP_SECONDS = 0.05  # woken passes at most this often: a burst of settled jobs is one pass


def advance_batches(settings, storage) -> dict[str, int]:
    """One pass: stop batches past their window, finalize batches whose jobs have all
    finished, remove expired files. Each step in its own short transactions. The report
    also says how many batches are still running (`batches_open`)."""
    sessions, now = session_factory(settings.database_url), utcnow()
    with transaction(sessions) as session:
        overdue = session.scalars(select(OpenAIBatch).where(
            OpenAIBatch.status == BatchStatus.IN_PROGRESS.value, OpenAIBatch.stop_reason.is_(None),
            OpenAIBatch.expires_at <= now)).all()
        for batch in overdue:
            stop_batch(session, batch, "expired")
    with sessions() as session:
        unfinished = (select(OpenAIBatchJob.job_id).join(Job, Job.id == OpenAIBatchJob.job_id)
                      .where(OpenAIBatchJob.batch_id == OpenAIBatch.id, Job.state.in_(UNFINISHED_JOB_STATES)))
        open_batches = session.execute(select(OpenAIBatch.id, exists(unfinished)).where(
            OpenAIBatch.status.in_(OPEN_BATCH_STATUSES))).all()
    ready = [batch_id for batch_id, running in open_batches if not running]
    tokens = token_counter(settings) if ready else None
    for batch_id in ready:
        finalize_batch(sessions, storage, batch_id, tokens, settings.file_expiry_seconds)
    with transaction(sessions) as session:
        removed = remove_expired_files(session, storage, now)
    return {"batches_expired": len(overdue), "batches_finalized": len(ready), "files_removed": removed,
            "batches_open": len(open_batches) - len(ready)}


def start_thread(settings, storage) -> threading.Event:
    """`advance_batches` every GENQ_BATCH_POLL_SECONDS in a daemon thread, and sooner
    when a job reaches its final state while a batch runs (`follow_settled`): a batch's
    last job does not wait out the poll, and jobs of no batch wake nothing. Runs until
    the returned event is set. An error is logged and the next tick tries again."""
    stop, wake = threading.Event(), threading.Event()
    follow_settled(settings.redis_url, wake, stop)

    def loop() -> None:
        running = True  # whether the last pass left a batch open (before the first: perhaps)
        due = time.monotonic() + settings.batch_poll_seconds
        while not stop.is_set():
            woken = wake.wait(max(0.0, due - time.monotonic()))
            wake.clear()
            if stop.is_set():
                return
            if woken and not running and time.monotonic() < due:
                continue  # a job of no batch; a batch created since is the next tick's
            due = time.monotonic() + settings.batch_poll_seconds
            try:
                report = advance_batches(settings, storage)
                running = report.pop("batches_open") > 0
                if any(report.values()):
                    log.info("openai batches: %s", report)
            except Exception:
                log.exception("advancing OpenAI batches failed; trying again")
            stop.wait(WAKE_GAP_SECONDS)

    threading.Thread(target=loop, name="openai-batches", daemon=True).start()
    return stop


def token_counter(settings) -> TokenCounter:
    try:
        return TokenCounter({spec.name: spec for spec in load_registry(settings.models_file)})
    except ConfigError as exc:
        log.warning("no registry to count tokens with (usage will read 0): %s", exc)
        return TokenCounter({})


def finalize_batch(sessions, storage, batch_id: str, tokens: TokenCounter, file_expiry_seconds: int) -> None:
    with transaction(sessions) as session:
        session.execute(update(OpenAIBatch).where(OpenAIBatch.id == batch_id,
                                                  OpenAIBatch.status == BatchStatus.IN_PROGRESS.value)
                        .values(status=BatchStatus.FINALIZING.value, finalizing_at=utcnow()))
    with sessions() as session:
        batch = session.get(OpenAIBatch, batch_id)
        files = write_batch_files(session, storage, batch, tokens)
    now = utcnow()
    expires = now + timedelta(seconds=batch.output_expires_seconds or file_expiry_seconds)
    final = {"cancelled": BatchStatus.CANCELLED, "expired": BatchStatus.EXPIRED}.get(batch.stop_reason or "",
                                                                                      BatchStatus.COMPLETED)
    values = {"status": final.value, f"{final.value}_at": now, "completed_requests": files.completed,
              "failed_requests": files.failed, "input_tokens": files.input_tokens, "output_tokens": files.output_tokens}
    with transaction(sessions) as session:
        for kind, written in (("output", files.output), ("error", files.errors)):
            file_id = derived_file_id(batch.id, kind)
            existing = session.get(OpenAIFile, file_id)
            if existing is not None:
                session.delete(existing)
                session.flush()
            if written is not None and written.lines:
                session.add(OpenAIFile(id=file_id, tenant=batch.tenant, purpose=FilePurpose.BATCH_OUTPUT.value,
                                       filename=f"{batch.id}_{kind}.jsonl", bytes=written.bytes, lines=written.lines,
                                       parts=written.parts, created_at=now, expires_at=expires))
                values[f"{kind}_file_id"] = file_id
        session.execute(update(OpenAIBatch).where(OpenAIBatch.id == batch.id,
                                                  OpenAIBatch.status.in_(OPEN_BATCH_STATUSES)).values(**values))
    log.info("batch %s %s: %d completed, %d failed", batch.id, final.value, files.completed, files.failed)
