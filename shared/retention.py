"""Retention: a finished job is kept GENQ_RESULT_TTL after it finished (a tenant's entry
in GENQ_RESULT_TTL_TENANTS overrides it), then its rows and outputs are removed; DELETE
/v1/jobs/<id> removes one at once.

Removing a job is told in two steps:

    remove_jobs (one transaction: the job's items and row go, and an `output_removals`
    row names each job that had outputs) -> remove_outputs (every object under
    jobs/<id>/ is deleted, then its `output_removals` row)

Rows go first, so no row ever points to a deleted object; a crash between the steps
leaves the `output_removals` row, and the next sweep finishes the job. Objects are
deleted by prefix, so a file a stale worker wrote after its lease expired goes too.

The sweep takes the jobs that finished longest ago, oldest first (ix_jobs_finished), in
batches of GENQ_RETENTION_BATCH_JOBS, each found without a lock and removed in its own
short transaction, then a pause as long as the batch took, so that submits and polls
never queue behind the sweep for long (SQLite has one writer). A job of an
OpenAI batch that is still open (its output file not yet written) is kept until the
batch finishes.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import delete, exists, insert, inspect, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from shared.db import session_factory, transaction
from shared.errors import Conflict, NotFound
from shared.openai_orm import OPEN_BATCH_STATUSES, BatchStatus, OpenAIBatch, OpenAIBatchJob
from shared.orm import Job, JobItem, OutputRemoval, utcnow
from shared.states import TERMINAL_JOB_STATES

log = logging.getLogger(__name__)

UNFINISHED_BATCH_STATUSES = (BatchStatus.VALIDATING.value, *OPEN_BATCH_STATUSES)
MIN_PAUSE_SECONDS = 0.01
FAILURES_BEFORE_GIVING_UP = 3  # storage errors in a row that end a pass of output removals


def result_ttl(settings, tenant: str) -> timedelta | None:
    """How long `tenant`'s finished jobs are kept (None: for ever)."""
    overrides = settings.result_ttl_tenants
    return overrides[tenant] if tenant in overrides else settings.result_ttl


def expires_at(settings, job: Job) -> datetime | None:
    """When the reconciler removes `job`: None while it runs, or when it is kept for ever."""
    ttl = result_ttl(settings, job.tenant)
    if job.finished_at is None or ttl is None or not job.state.is_terminal():
        return None
    return job.finished_at + ttl


def job_outputs_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"  # shared.storage.output_key names every output of a job under it


def in_open_batch():
    """A job whose OpenAI batch still needs it (to count it or to write its output file)."""
    return exists(select(OpenAIBatchJob.job_id).join(OpenAIBatch, OpenAIBatch.id == OpenAIBatchJob.batch_id).where(
        OpenAIBatchJob.job_id == Job.id, OpenAIBatch.status.in_(UNFINISHED_BATCH_STATUSES)))


def expired_job_ids(session: Session, settings, now: datetime, limit: int, among: list[str] | None = None) -> list[str]:
    """Up to `limit` finished jobs past their time, oldest first, read from the
    finish-time index alone (a job has a finish time only while it is finished); with
    `among`, those of the given ids that still are, locked (PostgreSQL skips rows
    another session holds: a retry or a delete may be changing them)."""
    chosen: list[str] = []
    overrides = settings.result_ttl_tenants
    groups: list[tuple[timedelta | None, list]] = [
        (settings.result_ttl, [Job.tenant.not_in(list(overrides))] if overrides else [])]
    groups += [(ttl, [Job.tenant == tenant]) for tenant, ttl in overrides.items()]
    for ttl, conditions in groups:
        if ttl is None or len(chosen) >= limit:
            continue
        query = select(Job.id).where(Job.finished_at <= now - ttl, ~in_open_batch(), *conditions)
        if among is None:
            query = query.order_by(Job.finished_at).limit(limit - len(chosen))
        else:
            query = query.where(Job.id.in_(among), Job.state.in_(TERMINAL_JOB_STATES)).with_for_update(
                skip_locked=True, of=Job)
        chosen += session.scalars(query)
    return chosen


def remove_jobs(session: Session, job_ids: list[str]) -> list[str]:
    """Delete the jobs' items and rows, and name those that had outputs in
    `output_removals`; returns the ids it named. The caller commits, then calls
    `remove_outputs`."""
    if not job_ids:
        return []
    with_outputs = list(session.scalars(
        select(JobItem.job_id).where(JobItem.job_id.in_(job_ids), JobItem.output_key.is_not(None)).distinct()))
    if with_outputs:
        now = utcnow()
        session.execute(insert(OutputRemoval), [{"job_id": job_id, "created_at": now} for job_id in with_outputs])
    session.execute(delete(JobItem).where(JobItem.job_id.in_(job_ids)))
    session.execute(delete(OpenAIBatchJob).where(OpenAIBatchJob.job_id.in_(job_ids)))
    session.execute(delete(Job).where(Job.id.in_(job_ids)))
    return with_outputs


def remove_outputs(sessions, storage, job_ids: Iterable[str]) -> int:
    """Delete the objects of removed jobs, then their `output_removals` rows; returns the
    objects deleted. A job whose objects cannot be deleted keeps its row for the next
    sweep, and the others go on; after a few failures in a row (the storage is down) it
    stops."""
    deleted, failures = 0, 0
    for job_id in job_ids:
        try:
            deleted += storage.delete_prefix(job_outputs_prefix(job_id))
        except Exception as exc:
            log.warning("could not delete the outputs of removed job %s yet (%s); the next sweep will", job_id, exc)
            failures += 1
            if failures >= FAILURES_BEFORE_GIVING_UP:
                break
            continue
        failures = 0
        with transaction(sessions) as session:
            session.execute(delete(OutputRemoval).where(OutputRemoval.job_id == job_id))
    return deleted


def delete_job(session: Session, job: Job) -> list[str]:
    """DELETE /v1/jobs/<id>: a finished job goes at once (a running one is refused). The
    row is locked first, so a retry committed meanwhile is seen. The caller commits, then
    calls `remove_outputs` with what this returns. A job another request deleted since
    it was found is not found (404), as it would be a moment later."""
    try:
        session.refresh(job, with_for_update=True)
    except InvalidRequestError:  # "Could not refresh instance": its row is gone
        raise NotFound(f"no job {inspect(job).identity[0]!r}", field="id") from None
    if not job.state.is_terminal():
        raise Conflict(f"job {job.id} is {job.state.value}; cancel it first, then delete it once it has stopped",
                       field="id")
    if session.scalar(select(Job.id).where(Job.id == job.id, in_open_batch())):
        raise Conflict(f"job {job.id} belongs to an OpenAI batch that is still open; it can be deleted once the "
                       "batch has finished", field="id")
    return remove_jobs(session, [job.id])


@dataclass
class SweepReport:
    jobs_removed: int = 0
    objects_removed: int = 0


def sweep(settings, storage, now: datetime | None = None) -> SweepReport:
    """Remove every expired job (and finish removals a crash interrupted), a batch a
    transaction."""
    sessions = session_factory(settings.database_url)
    read_sessions = session_factory(settings.database_url, read_only=True)
    report = SweepReport()
    with transaction(read_sessions) as session:  # a read: it never waits for SQLite's write lock
        interrupted = list(session.scalars(select(OutputRemoval.job_id).order_by(OutputRemoval.created_at)
                                          .limit(settings.retention_batch_jobs)))
    report.objects_removed += remove_outputs(sessions, storage, interrupted)
    while True:
        moment, began = now or utcnow(), time.monotonic()
        with transaction(read_sessions) as session:  # found without SQLite's write lock, then checked under it
            candidates = expired_job_ids(session, settings, moment, settings.retention_batch_jobs)
        with transaction(sessions) as session:
            job_ids = expired_job_ids(session, settings, moment, len(candidates), among=candidates)
            with_outputs = remove_jobs(session, job_ids)
        report.jobs_removed += len(job_ids)
        report.objects_removed += remove_outputs(sessions, storage, with_outputs)
        if len(candidates) < settings.retention_batch_jobs:
            break
        time.sleep(max(MIN_PAUSE_SECONDS, time.monotonic() - began))  # others write at least half the time
    return report


def start_thread(settings, storage) -> threading.Event:
    """`sweep` every GENQ_RETENTION_INTERVAL_SECONDS in a daemon thread of the
    reconciler, until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.retention_interval_seconds):
            try:
                report = sweep(settings, storage)
                if report.jobs_removed or report.objects_removed:
                    log.info("retention: removed %d expired jobs and %d output objects",
                             report.jobs_removed, report.objects_removed)
            except Exception:
                log.exception("retention sweep failed; trying again")

    threading.Thread(target=loop, name="retention", daemon=True).start()
    return stop
