"""What an event stream reads from the ledger, and the cursor its event ids carry.

An event's id is its place in the ledger's order of finishing: `<finished_at in
microseconds since the epoch>-<job id>-<item index>`, or `...-<job id>-end` for a job's
final event (a job settles after its last item, so its end sorts after them). A client
that reconnects with `Last-Event-ID` gets every event whose place is after it, read
from the ledger: nothing is buffered in memory. Each read goes through the
(job_id, finished_at) index of the items and costs what finished since the cursor.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest
from shared.keys import Principal
from shared.ledger.jobs import Counts, counts_of
from shared.orm import ItemState, Job, JobItem, JobState
from web.queries import visible_jobs

END = 2**31  # the index of a job's final event: after every item of the job
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CURSOR = re.compile(r"^([0-9]{1,17})-([0-9a-f]{32}|)-([0-9]{1,10}|end)\Z")
FINISHED_ITEM_STATES = (ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED)
LIVE_JOB_STATES = (JobState.RUNNING, JobState.CANCELLING)


def micros(moment: datetime) -> int:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return (moment - EPOCH) // timedelta(microseconds=1)


def moment(micros_: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros_)


@dataclass(frozen=True, order=True)
class Cursor:
    micros: int
    job_id: str
    index: int

    def __str__(self) -> str:
        return f"{self.micros}-{self.job_id}-{'end' if self.index == END else self.index}"

    @classmethod
    def parse(cls, text: str) -> "Cursor":
        match = CURSOR.match(text.strip())
        if match is None:
            raise InvalidRequest("Last-Event-ID is not an event id this API sent (they look like "
                                 "1764522000123456-<job id>-12)", field="Last-Event-ID")
        stamp, job_id, index = match.groups()
        return cls(int(stamp), job_id, END if index == "end" else int(index))

    @classmethod
    def of_item(cls, item: JobItem) -> "Cursor":
        return cls(micros(item.finished_at), item.job_id, item.index)

    @classmethod
    def of_end(cls, job: Job) -> "Cursor":
        return cls(micros(job.finished_at), job.id, END)

    def looking_back(self, seconds: float) -> datetime:
        return moment(self.micros) - timedelta(seconds=seconds)


@dataclass
class JobView:
    job: Job
    counts: Counts


def jobs_by_id(session: Session, principal: Principal, job_ids: list[str]) -> list[JobView]:
    """The jobs of `job_ids` the caller may see, each with its counts (one statement)."""
    if not job_ids:
        return []
    query = visible_jobs(principal).where(Job.id.in_(job_ids))
    return [JobView(job, counts_of(job)) for job in session.scalars(query)]


def live_or_finished_since(session: Session, principal: Principal, since: datetime) -> list[JobView]:
    """A tenant's running jobs and those that finished since `since`: what a tenant's
    stream may have missed (queued jobs have nothing new to tell)."""
    query = visible_jobs(principal).where(or_(Job.state.in_(LIVE_JOB_STATES), Job.finished_at >= since))
    return [JobView(job, counts_of(job)) for job in session.scalars(query)]


def items_finished_since(session: Session, job_ids: list[str], since: datetime | None) -> list[JobItem]:
    """Finished items of `job_ids` in finishing order; from `since` when given."""
    if not job_ids:
        return []
    query = select(JobItem).where(JobItem.job_id.in_(job_ids), JobItem.finished_at.is_not(None),
                                  JobItem.state.in_(FINISHED_ITEM_STATES))
    if since is not None:
        query = query.where(JobItem.finished_at >= since)
    items = session.scalars(query).all()
    return sorted((item for item in items if item.finished_at is not None), key=Cursor.of_item)
