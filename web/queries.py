"""Reads of jobs and items for the API, always through `visible_jobs`."""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Callable

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest, NotFound
from shared.keys import Principal
from shared.ledger import tenant_pending
from shared.ledger.jobs import Counts, counts_of
from shared.ledger.plans import row_check
from shared.ledger.queue_position import Outlook, QueuePlace, outlook
from shared.orm import Job, JobItem, JobState, utcnow
from shared.progress import ItemProgress
from shared.states import UNFINISHED_JOB_STATES
from shared.throughput import KEY as THROUGHPUT_KEY
from shared.throughput import Throughput, ThroughputLog, estimate

JOB_ID = re.compile(r"^[0-9a-f]{32}\Z")  # what ledger.new_id makes


def visible_jobs(principal: Principal, job_id: str | None = None):
    """The one place jobs are scoped by tenant: every read and change of a job starts here.
    With `job_id`, that one job: the tenant is then a row check, so the primary key is
    always the way in (without statistics PostgreSQL read a tenant's jobs through the
    (tenant, state, created) index instead: 0.21 against 0.03 ms at 2,000 jobs)."""
    query = select(Job)
    if job_id is not None:
        query = query.where(Job.id == job_id)
        tenant = row_check(Job.tenant)
    else:
        tenant = Job.tenant
    return query if principal.admin else query.where(tenant == principal.tenant)


def find_job(session: Session, principal: Principal, job_id: str) -> Job:
    """Another tenant's job is `404`, exactly like one that never existed."""
    job = session.scalars(visible_jobs(principal, job_id)).first() if JOB_ID.match(job_id) else None
    if job is None:
        raise NotFound(f"no job {job_id!r}", field="id")
    return job


def find_job_with_counts(session: Session, principal: Principal, job_id: str) -> tuple[Job, Counts]:
    """`find_job` and the job's counts (its counters, on its row): a poll (the most
    frequent request) reads one row."""
    job = None
    if JOB_ID.match(job_id):
        params = {"job_id": job_id} if principal.admin else {"job_id": job_id, "tenant": principal.tenant}
        job = session.scalars(_job_statement(principal.admin), params).first()
    if job is None:
        raise NotFound(f"no job {job_id!r}", field="id")
    return job, counts_of(job)


@lru_cache(maxsize=2)
def _job_statement(admin: bool):
    """`find_job_with_counts`' statement, built once per process (every poll runs it)."""
    return visible_jobs(Principal(bindparam("tenant"), admin), bindparam("job_id"))


def find_item(session: Session, job: Job, index: int) -> JobItem:
    item = session.scalars(select(JobItem).where(JobItem.job_id == job.id, JobItem.index == index)).first()
    if item is None:
        raise NotFound(f"job {job.id} has no item {index}", field="index")
    return item


def list_items(session: Session, job: Job, offset: int, limit: int) -> list[JobItem]:
    return list(
        session.scalars(
            select(JobItem).where(JobItem.job_id == job.id, JobItem.index >= offset).order_by(JobItem.index).limit(limit)
        )
    )


CURSOR = re.compile(r"^([0-9]{1,17})-([0-9a-f]{32})\Z")  # declared as the parameter's pattern
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def encode_cursor(job: Job) -> str:
    """A position in the listing's order: the job's creation time in microseconds since
    the epoch (UTC) and its id. Any string of this form is a valid position, so the
    document can declare the form and every value of it answers a page."""
    created = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=timezone.utc)
    return f"{(created - EPOCH) // timedelta(microseconds=1)}-{job.id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    match = CURSOR.match(cursor)
    if match is None:
        raise InvalidRequest("cursor is not one this API returned (it looks like 1764522000123456-<job id>)",
                             field="cursor")
    return EPOCH + timedelta(microseconds=int(match.group(1))), match.group(2)


def list_jobs(
    session: Session, principal: Principal, state: JobState | None, limit: int, cursor: str | None
) -> tuple[list[tuple[Job, Counts]], str | None]:
    """Newest first, each job with its counts; `cursor` continues after the last job of
    the previous page."""
    query = visible_jobs(principal).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if state is not None:
        query = query.where(Job.state == state)
    if cursor is not None:
        created, job_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    rows = [(job, counts_of(job)) for job in session.scalars(query)]
    next_cursor = encode_cursor(rows[limit - 1][0]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def pending_items_of_tenant(session: Session, tenant: str) -> int:
    """Read from the tenant's pending total (`shared.ledger.tenant_pending`), a few rows
    whatever the tenant has queued."""
    return tenant_pending.of_tenant(session.connection(), tenant)


@dataclass(frozen=True)
class JobOutlook:
    """What a status poll adds to a job: its place in the queue, its ETA (or why there is
    none) and the progress of its running items."""

    place: QueuePlace | None
    eta_seconds: float | None
    eta_reason: str | None
    exact: bool = True
    running: list[ItemProgress] = field(default_factory=list)


def job_outlook(session: Session, job: Job, counts: Counts, ctx, watch) -> JobOutlook:
    """`ctx` is the web's context (settings, registry, recent outlooks); `watch` its
    `shared.watch.Watch`. The queue is read from the ledger by the claim's own rule
    (`ledger.queue_position`), or taken from the recent outlooks; the throughput and the
    running items' progress come from Redis, where the workers write them."""
    settings, recent = ctx.settings, ctx.outlooks
    running = watch.progress.read(job.id) if counts.running else []

    def read() -> Outlook | None:
        lost_before = lost_lease_bound(settings) if counts.running else None
        slice_items = ctx.registry.slice_items(job.model, settings.slice_max_items)
        return outlook(session, job, pending=counts.pending, slice_items=slice_items,
                       scan_limit=settings.queue_scan_jobs, lost_before=lost_before)
    view = recent.outlook(job, counts.pending, read)
    if view is None:
        return JobOutlook(None, None, "not_open", running=running)
    # Items of the job held under a lease: a worker is on it (a lost one's items go to the next claim)
    # even when none served the model within the liveness window (an idle worker's first commit).
    eta, reason = estimate(recent.throughput(watch.throughput), job.model, view.items_to_wait_for, exact=view.exact,
                           one_worker_at_least=view.reclaimed_at is not None or counts.running > 0)
    if eta is not None and view.reclaimed_at is not None:
        eta += max(0.0, (view.reclaimed_at - utcnow()).total_seconds())  # then they run again
        reason = "worker_lost"
    return JobOutlook(view.place, eta, reason, view.exact, running)


def lost_lease_bound(settings) -> datetime:
    """A lease that expires before this was not renewed for two heartbeats: its worker is
    gone (a live one renews every `heartbeat_seconds`, pushing it `lease_seconds` ahead)."""
    return utcnow() + timedelta(seconds=settings.lease_seconds - 2 * settings.heartbeat_seconds)


class RecentOutlooks:
    """Each job's queue outlook (`ledger.queue_position.outlook`: its place, the items
    claimed before its last one, the model's running items) and each model's throughput
    (`FreshThroughput`), the ETA's inputs, kept by a web process for `max_age` seconds
    (GENQ_OUTLOOK_CACHE_SECONDS). Reading the queue takes three to five statements, more
    than the rest of a poll, for an estimate that moves slowly: a client polling one job
    in a loop, or a console and a script watching the same job, paid it on every request.
    The job's own pending items stay exact (the counts are read on every poll): a kept
    outlook moves by their change since it was read."""

    MAX_JOBS = 10_000

    def __init__(self, max_age: float):
        self.max_age = max_age
        self._known: dict[tuple[str, str], tuple[float, int, Outlook | None]] = {}
        self._lock = threading.Lock()
        self._throughput: FreshThroughput | None = None

    def throughput(self, log: ThroughputLog) -> FreshThroughput:
        """The `FreshThroughput` of the web's one throughput log (`watch.throughput`)."""
        fresh = self._throughput
        if fresh is None or fresh.log is not log:
            fresh = self._throughput = FreshThroughput(log, self.max_age)
        return fresh

    def outlook(self, job: Job, pending: int, read: Callable[[], Outlook | None]) -> Outlook | None:
        key, now = (job.id, str(job.state)), time.monotonic()
        known = self._known.get(key)
        if known is not None and now - known[0] <= self.max_age:
            _at, then_pending, view = known
            if view is None or pending == then_pending:
                return view
            return replace(view, items_before_end=max(pending, view.items_before_end + pending - then_pending))
        view = read()
        if self.max_age > 0:
            with self._lock:
                if len(self._known) >= self.MAX_JOBS:
                    self._known.clear()
                self._known[key] = (now, pending, view)
        return view


class FreshThroughput:
    """A model's throughput as `ThroughputLog.measure` reads it, kept for at most
    `max_age` seconds. A running model's log holds thousands of samples (one per
    micro-batch in the window), and reading and summing them cost more than the rest of a
    poll; a rate measured over minutes moves little in a second, so a measured one is kept
    for `max_age` even while samples arrive (reading it again at every new sample, as this
    did before, meant a full read per commit of the model: a poll's tail latency). Before
    anything is measured, one cheap read per poll says whether a first sample came, so the
    first ETA shows at once."""

    def __init__(self, log: ThroughputLog, max_age: float = 1.0):
        self.log, self.max_age = log, max_age
        self._known: dict[str, tuple[tuple, float, Throughput]] = {}

    def measure(self, model: str) -> Throughput:
        now = time.monotonic()
        known = self._known.get(model)
        fresh = known is not None and now - known[1] < self.max_age
        if fresh and known[2].rate_per_worker is not None:
            return known[2]
        pipe = self.log.redis.pipeline(transaction=False)
        key = THROUGHPUT_KEY.format(model=model)
        pipe.zrevrange(key, 0, 0)
        pipe.zcard(key)
        newest, size = pipe.execute()
        version = (tuple(newest), size)
        if fresh and known[0] == version:
            return known[2]
        throughput = self.log.measure(model)
        self._known[model] = (version, now, throughput)
        return throughput


def open_work_by_model(session: Session) -> list[tuple[str, str, int, int, int]]:
    """(model, job state, jobs, pending items, running items) of the unfinished jobs: one
    statement per /metrics scrape, which reads the unfinished jobs (their counters)
    through the state index, so a scrape costs the open work, never the history."""
    rows = session.execute(
        select(Job.model, Job.state, func.count(), func.sum(Job.pending_items), func.sum(Job.running_items))
        .where(Job.state.in_(UNFINISHED_JOB_STATES)).group_by(Job.model, Job.state)
    )
    return [(model, getattr(state, "value", state), int(jobs), int(pending or 0), int(running or 0))
            for model, state, jobs, pending, running in rows]
