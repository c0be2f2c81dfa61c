"""What a stream sends, and how a hundred streams on one job share their reads.

`read_jobs` turns a read of the ledger into `JobRead`s: each job's progress and (once
final) its end, and its items finished since a moment, each event already encoded as
JSON. `Tracker` is one connection's memory: what it has sent (an item committed late,
with a finish time before the cursor, is still sent once: reads look back
GENQ_EVENTS_COMMIT_SKEW_SECONDS), and it yields the events it has not.

`SharedReads`: when a notice wakes every stream of a job, one of them reads and the
others take its result, if that read began after the notice they were woken by (the
hub's sequence number says so) and reaches back as far as they need. So a commit costs
one read per job and process, not one per stream.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sqlalchemy.orm import Session

from shared.keys import Principal
from shared.orm import JobState
from web import event_reads
from web.event_reads import Cursor, JobView
from web.response_models import JobResponse

FINAL_EVENTS = {JobState.SUCCEEDED: "completed", JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}
PROGRESS_FIELDS = ("state", "counts", "progress", "queue", "eta_seconds", "eta_reason", "started_at", "finished_at")
CACHE_SECONDS = 300


def encode(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))


@dataclass
class JobRead:
    job_id: str
    state: JobState
    progress: str  # JSON
    seen: tuple  # what makes a new progress event: the state and counts
    items: list[tuple[Cursor, str]]  # finished items in order: place, JSON
    end: Cursor | None = None  # the final event's place, once the job is final

    @property
    def final_event(self) -> str | None:
        return FINAL_EVENTS.get(self.state)


def read_jobs(session: Session, views: list[JobView], since, script_root: str, status=None) -> list[JobRead]:
    """`views` (read first: once a job is final, every item is committed) with their items
    finished since `since`. `status(session, job, counts)` is the job as GET /v1/jobs/<id>
    answers it (JSON-ready), its queue place and ETA included."""
    items = event_reads.items_finished_since(session, [view.job.id for view in views], since)
    by_job: dict[str, list] = {}
    for item in items:
        by_job.setdefault(item.job_id, []).append((Cursor.of_item(item), encode(item_data(item, script_root))))
    reads = []
    for view in views:
        progress = progress_data(view, status(session, view.job, view.counts) if status else None)
        reads.append(JobRead(view.job.id, view.job.state, encode(progress),
                             (progress["state"], encode(progress["counts"])), by_job.get(view.job.id, []),
                             Cursor.of_end(view.job) if view.job.state in FINAL_EVENTS else None))
    return reads


def item_data(item, script_root: str) -> dict:
    output = None
    if item.output_text is not None or item.output_key is not None:
        output = f"{script_root}/v1/jobs/{item.job_id}/items/{item.index}/output"
    return {"job_id": item.job_id, "index": item.index, "state": item.state.value, "output_url": output,
            "error": item.error, "finished_at": item.finished_at.isoformat()}


def progress_data(view: JobView, full: dict | None = None) -> dict:
    """The job's status as GET /v1/jobs/<id> gives it (`full`), its fields of progress only."""
    full = full or JobResponse.of(view.job, view.counts).model_dump(mode="json")
    return {"job_id": view.job.id, **{name: full[name] for name in PROGRESS_FIELDS if name in full}}


class Tracker:
    """What one connection has sent since `start` (the client's Last-Event-ID)."""

    def __init__(self, start: Cursor, skew: float):
        self.start, self.cursor, self.skew = start, start, skew
        self.sent: set[Cursor] = set()  # what was sent at or after `floor` (microseconds)
        self.floor = 0
        self.progress: dict[str, tuple] = {}
        self.ended: set[str] = set()

    def since(self):
        return self.cursor.looking_back(self.skew)

    def events_of(self, reads: list[JobRead]) -> Iterator[tuple[str, str, str]]:
        """(id, event, data) of everything in `reads` this connection has not sent."""
        for read in reads:
            for place, data in read.items:
                if place > self.start and place.micros >= self.floor and place not in self.sent:
                    yield self._mark(place), "item", data
            if self.progress.get(read.job_id) != read.seen:
                self.progress[read.job_id] = read.seen
                yield str(self.cursor), "progress", read.progress
            if read.end is not None and read.job_id not in self.ended:
                self.ended.add(read.job_id)
                if read.end > self.start:
                    yield self._mark(read.end), read.final_event, read.progress
        self.floor = event_reads.micros(self.cursor.looking_back(self.skew))  # older: sent, or past the skew
        self.sent = {place for place in self.sent if place.micros >= self.floor}

    def _mark(self, place: Cursor) -> str:
        self.sent.add(place)
        self.cursor = max(self.cursor, place)
        return str(self.cursor)


@dataclass
class _Entry:
    began_at: int  # the hub's sequence number when the read began
    since: object  # how far back its items reach
    reads: list[JobRead]
    at: float = field(default_factory=time.monotonic)


class SharedReads:
    """One job's latest read, shared by the streams of this process that follow it."""

    def __init__(self, sequence: Callable[[], int]):
        self._sequence = sequence
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str, since, woken_at: int | None, read: Callable[[], list[JobRead]]) -> list[JobRead]:
        """A read that began at or after `woken_at` and reaches back to `since`; `read()`
        makes one when there is none (`woken_at` None: always: a heartbeat's re-read is
        for a notice that may have been lost)."""
        with self._lock:
            lock = self._locks.setdefault(job_id, threading.Lock())
        with lock:
            entry = self._entries.get(job_id)
            if (woken_at is not None and entry is not None and entry.began_at >= woken_at
                    and entry.since <= since):
                return entry.reads
            began_at = self._sequence()
            reads = read()
            self._keep(job_id, _Entry(began_at, since, reads))
            return reads

    def _keep(self, job_id: str, entry: _Entry) -> None:
        with self._lock:
            self._entries[job_id] = entry
            stale = [key for key, old in self._entries.items() if time.monotonic() - old.at > CACHE_SECONDS]
            for key in stale:
                self._entries.pop(key, None)
                self._locks.pop(key, None)


def reads_for(session_factory, principal: Principal, job_ids: list[str] | None, since, script_root: str,
              reads_at_once, status=None) -> list[JobRead]:
    """Read `job_ids` (None: the principal's live jobs and those finished since `since`)
    in a short session of its own, at most `reads_at_once` such reads at a time."""
    with reads_at_once, session_factory() as session:
        if job_ids is None:
            views = event_reads.live_or_finished_since(session, principal, since)
        else:
            views = event_reads.jobs_by_id(session, principal, job_ids)
        return read_jobs(session, views, since, script_root, status)
