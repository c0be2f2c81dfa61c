"""Live events over Server-Sent Events: `GET /v1/jobs/<id>/events` (one job, from its
first finished item to its final event) and `GET /v1/events` (every job of the
caller's tenant, from now on).

Events: `progress` (state, counts, progress), `item` (index, state, output link) as
each item finishes, and a final `completed`, `failed` or `cancelled`; a comment line
every GENQ_EVENTS_HEARTBEAT_SECONDS keeps proxies from closing an idle stream. Every
event carries an `id:` (`web.event_reads.Cursor`): a client that reconnects with
`Last-Event-ID` gets exactly the events after it, read from the ledger. A job stream
resumed after its final event answers 204, which tells an EventSource to stop.

How a stream waits, and why so. The notification path is Redis pub/sub: a worker
publishes job ids after each commit (`shared.notices`), one listener thread per web
process wakes the streams concerned (`web.notice_hub`), and each re-reads the ledger
from its cursor in a short session of its own. Between notices a stream holds no
database connection (the session is closed after every read) and no Redis connection.
It does hold a thread: gunicorn runs its `gthread` worker with GENQ_WEB_THREADS threads
for requests plus GENQ_EVENTS_MAX_STREAMS for streams, and a stream over that bound is
refused (503 with Retry-After), so streams can never take the threads polls are served
by. A parked thread costs a small stack and no CPU. We chose this over gevent because
gevent would put every request of the process on one OS thread: a SQLite call (the
embedded default) blocks the whole hub while it waits for the write lock, and the
rate limiter, key cache and psycopg code would all have to be green-safe. We chose it
over a separate async server because it keeps one port, one app and one auth path.
"""
from __future__ import annotations

import threading
import time
from typing import Iterator

from flask import Response, current_app, request, stream_with_context

from shared.errors import GenqError
from shared.keys import Principal
from web import event_reads, metrics, queries
from web.api import JOB_ID
from web.auth import current_principal, require_api_key
from web.context import GenqContext, close_db, db, genq
from web.event_reads import END, Cursor
from web.event_stream import SharedReads, Tracker, reads_for
from web.notice_hub import NoticeHub
from web.operations import RETRY_AFTER, DocumentedBlueprint, Param, Reply
from web.response_models import EVENT_STREAM_SCHEMA, ErrorResponse, JobStatusResponse

RETRY_MS = 2000
STREAM_READS_AT_ONCE = 4  # streams woken together share the pool with requests: at most this many read at once

events = DocumentedBlueprint("events", __name__, url_prefix="/v1", secured=True)
events.before_request(require_api_key)

LAST_EVENT_ID = Param("Last-Event-ID", "header", {"type": "string", "pattern": "^$|" + event_reads.CURSOR.pattern.replace(
    "\\Z", "$")}, "The id of the last event the client got: the stream resumes after it, from the ledger (empty: "
    "from the start, as no header).")
STREAM = Reply("The event stream.", media_types={"text/event-stream": EVENT_STREAM_SCHEMA})
BAD_ID = Reply("Last-Event-ID is not an id this API sent (`invalid_request`).", ErrorResponse)
FULL = Reply("This server already serves GENQ_EVENTS_MAX_STREAMS streams (`too_many_streams`).", ErrorResponse,
             headers={"Retry-After": RETRY_AFTER})


class TooManyStreams(GenqError):
    status = 503
    code = "too_many_streams"


class Streams:
    """Per web process: the notice hub, the bound on open streams, the bound on reads."""

    def __init__(self, ctx: GenqContext):
        self.ctx = ctx
        self.hub = NoticeHub(ctx.settings.redis_url)
        self.slots = threading.BoundedSemaphore(ctx.settings.events_max_streams)
        self.reads = threading.BoundedSemaphore(STREAM_READS_AT_ONCE)
        self.shared = SharedReads(lambda: self.hub.sequence)
        self.watch = metrics.watch()  # where workers report throughput and progress (for the ETA)

    def session(self):
        return self.ctx.read_sessions()

    def status(self, session, job, counts) -> dict:
        """The job as GET /v1/jobs/<id> answers it: queue place and ETA included."""
        outlook = queries.job_outlook(session, job, counts, self.ctx, self.watch)
        return JobStatusResponse.of_status(job, counts, outlook).model_dump(mode="json")


def streams() -> Streams:
    app = current_app
    with _streams_lock:
        if "genq_streams" not in app.extensions:
            app.extensions["genq_streams"] = Streams(genq())
        return app.extensions["genq_streams"]


_streams_lock = threading.Lock()


def last_event_id() -> Cursor | None:
    text = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    return Cursor.parse(text) if text else None


@events.operation("GET", "/jobs/<job_id>/events", "Follow a job's events", tag="events",
                  description="Server-Sent Events: `progress`, `item` as each item finishes, and a final "
                  "`completed`, `failed` or `cancelled`, from the job's first finished item (or after Last-Event-ID).",
                  params=(JOB_ID, LAST_EVENT_ID),
                  responses={200: STREAM, 204: Reply("Last-Event-ID was the job's final event: nothing more will come."),
                             400: BAD_ID, 404: Reply("No such job (`not_found`).", ErrorResponse), 503: FULL})
def job_events(job_id: str):
    principal, start = current_principal(), last_event_id()
    job = queries.find_job(db(), principal, job_id)
    if start is not None and start.index == END and start.job_id == job.id and job.state.is_terminal():
        return Response(status=204)  # the client saw the end: tell an EventSource to stop
    start = start or Cursor(0, job.id, 0)  # before the job's first event
    return open_stream(lambda s, sub: job_stream(s, sub, principal, job.id, start), job.id)


@events.operation("GET", "/events", "Follow every job of the tenant", tag="events",
                  description="Server-Sent Events of every job of the caller's tenant (an admin key: of every "
                  "tenant), from now on (or after Last-Event-ID).",
                  params=(LAST_EVENT_ID,), responses={200: STREAM, 400: BAD_ID, 503: FULL})
def tenant_events():
    principal = current_principal()
    start = last_event_id() or Cursor(time.time_ns() // 1000, "", 0)  # from now on
    return open_stream(lambda s, sub: tenant_stream(s, sub, principal, start), None)


def open_stream(body, job_id: str | None) -> Response:
    state = streams()
    if not state.slots.acquire(blocking=False):
        raise TooManyStreams(f"this server is serving its limit of {state.ctx.settings.events_max_streams} event "
                             "streams; retry shortly", retry_after=5)
    close_db()  # the view's session: a stream reads in short sessions of its own
    subscription = state.hub.subscribe(job_id)
    subscription.opened_at = state.hub.sequence  # a read begun since saw all that was noticed before

    def release():
        state.hub.unsubscribe(subscription)
        state.slots.release()

    generator = stream_with_context(framed(body(state, subscription)))
    response = Response(Closing(generator, release), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


class Closing:
    """The response body: the stream, and what to give back when the server closes it
    (client gone, worker stopping), whether or not it ever started."""

    def __init__(self, iterable, on_close):
        self._iterable, self._on_close, self._closed = iterable, on_close, False

    def __iter__(self):
        return iter(self._iterable)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                close = getattr(self._iterable, "close", None)
                if close is not None:
                    close()
            finally:
                self._on_close()


def framed(events_: Iterator[tuple[str, str, str]]) -> Iterator[str]:
    """SSE framing: `id`, `event` and one `data` line (JSON has no newline); a comment
    line for an event without a name."""
    yield f"retry: {RETRY_MS}\n\n"
    for event_id, name, data in events_:
        yield f"id: {event_id}\nevent: {name}\ndata: {data}\n\n" if name else ": keep-alive\n\n"


def job_stream(state: Streams, subscription, principal: Principal, job_id: str, start: Cursor):
    """One job's events until its final one. Woken by a notice, it shares the read of the
    job with the other streams of this process that follow it (`SharedReads`)."""
    settings, script_root = state.ctx.settings, request.script_root
    tracker = Tracker(start, settings.events_commit_skew_seconds)
    woken_at: int | None = subscription.opened_at
    while True:
        since = tracker.since()
        reads = state.shared.get(job_id, since, woken_at, lambda: reads_for(
            state.session, principal, [job_id], since, script_root, state.reads, state.status))
        if not reads:
            return
        yield from tracker.events_of(reads)
        if reads[0].end is not None:
            return
        noticed = subscription.wait(settings.events_heartbeat_seconds)
        if state.hub.closing:
            return
        woken_at = state.hub.sequence if noticed else None
        if noticed is not None and not noticed:
            yield "", "", ""  # nothing for a whole interval: a comment, and a re-read of its own


def tenant_stream(state: Streams, subscription, principal: Principal, start: Cursor):
    """Every job of the tenant: on a notice, the jobs it names (those the caller may see);
    on a heartbeat or a reconnect to Redis, every live job and those finished since."""
    settings, script_root = state.ctx.settings, request.script_root
    tracker = Tracker(start, settings.events_commit_skew_seconds)
    noticed: set[str] | None = None
    while True:
        job_ids = None if noticed is None else sorted(noticed)
        yield from tracker.events_of(reads_for(state.session, principal, job_ids, tracker.since(), script_root,
                                               state.reads, state.status))
        noticed = subscription.wait(settings.events_heartbeat_seconds)
        if state.hub.closing:
            return
        if noticed is not None and not noticed:
            yield "", "", ""
            noticed = None
