"""Notices: "the ledger of these jobs changed", published on Redis after the commit.

A notice carries job ids only, never state: whoever listens (the web's event streams,
`web.notice_hub`) re-reads the ledger, so a stream can only ever report what was
committed (DESIGN principle 8). Pub/sub delivers at most once and only to those
listening at that moment, which is enough for a wake-up: a stream also re-reads the
ledger every GENQ_EVENTS_HEARTBEAT_SECONDS, so a lost notice costs latency, never an
event, and a client that reconnects resumes from the ledger with its Last-Event-ID.

Publishing never fails the caller: the work is committed whether or not Redis hears it.

Jobs that reach their final state are also named on `SETTLED_CHANNEL`: a few messages
per job, not one per micro-batch, so a listener that only cares about finished jobs
(the reconciler's batch finalizer, `follow_settled`) wakes once rather than on every
commit, and still keeps its own poll for what no notice told it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import redis

from shared.queue import redis_client

CHANNEL = "genq:notices"
SETTLED_CHANNEL = "genq:settled"
RECONNECT_SECONDS = (0.5, 1, 2, 5)

log = logging.getLogger(__name__)


class Notices:
    """Publishes notices on `CHANNEL`; one per process and Redis URL (`notices_for`)."""

    def __init__(self, redis_url: str):
        self.redis = redis_client(redis_url)

    def publish(self, job_ids: Iterable[str], pipe=None, also=None) -> None:
        """Say that the ledger of `job_ids` changed (call after the commit). With `pipe`
        (a Redis pipeline on the same server), the notice is queued there: the caller
        executes it, with whatever else it sends. `also(pipe)` queues more commands on
        the notice's round trip."""
        message = encode(job_ids)
        if pipe is not None:
            _queue(pipe, message, also)
            return
        if not message and also is None:
            return
        try:
            if also is None:
                self.redis.publish(CHANNEL, message)
                return
            pipe = self.redis.pipeline(transaction=False)
            _queue(pipe, message, also)
            pipe.execute()
        except redis.RedisError as exc:  # streams (and the batch finalizer) re-read the ledger on their own
            log.warning("could not publish a notice for jobs %s: %s", message, exc)

    def publish_ended(self, job_ids: Iterable[str], settled: Iterable[str], also=None) -> None:
        """`publish` for `job_ids`, and say on `SETTLED_CHANNEL` which of them reached
        their final state (`settled`; none: nothing is sent there), in one round trip;
        `also(pipe)` queues more commands on it."""
        settled_message = encode(settled)
        if not settled_message:
            self.publish(job_ids, also=also)
            return

        def and_settled(pipe) -> None:
            pipe.publish(SETTLED_CHANNEL, settled_message)
            if also is not None:
                also(pipe)

        self.publish(job_ids, also=and_settled)


def _queue(pipe, message: str, also) -> None:
    if message:
        pipe.publish(CHANNEL, message)
    if also is not None:
        also(pipe)


def encode(job_ids: Iterable[str]) -> str:
    return " ".join(dict.fromkeys(job_ids))


def decode(message: bytes | str) -> list[str]:
    text = message.decode() if isinstance(message, bytes) else message
    return [job_id for job_id in text.split() if job_id]


_publishers: dict[str, Notices] = {}
_lock = threading.Lock()


def notices_for(redis_url: str) -> Notices:
    """The process's publisher for `redis_url` (a forked child opens its own connections:
    see `redis_client`)."""
    with _lock:
        notices = _publishers.get(redis_url)
        if notices is None:
            notices = _publishers[redis_url] = Notices(redis_url)
        return notices


def follow_settled(redis_url: str, wake: threading.Event, stop: threading.Event) -> threading.Thread:
    """Set `wake` at each notice on `SETTLED_CHANNEL` (and on each (re)subscription:
    what was missed meanwhile is in the ledger), in a daemon thread, until `stop` is set."""
    thread = threading.Thread(target=follow_channel, name="genq-settled", daemon=True,
                              args=(redis_url, SETTLED_CHANNEL, lambda _job_ids: wake.set(), lambda: not stop.is_set()))
    thread.start()
    return thread


def follow_channel(redis_url: str, channel: str, on_notice: Callable[[list[str] | None], None],
                   keep_going: Callable[[], bool]) -> None:
    """Follow `channel` while `keep_going()`: `on_notice(job_ids)` at each notice, and
    `on_notice(None)` at each (re)subscription (what was missed meanwhile is in the
    ledger). A lost connection (Redis restarted) is retried after a growing pause."""
    failures = 0
    while keep_going():
        try:
            _follow(redis_url, channel, on_notice, keep_going)
            failures = 0
        except (redis.RedisError, OSError) as exc:
            delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
            failures += 1
            log.warning("subscription to %s lost (%s); reconnecting in %.1fs", channel, exc, delay)
            time.sleep(delay)


def _follow(redis_url: str, channel: str, on_notice, keep_going) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, health_check_interval=30)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel)
        on_notice(None)
        while keep_going():
            message = pubsub.get_message(timeout=1.0)
            if message is not None and message.get("type") == "message":
                on_notice(decode(message["data"]))
    finally:
        pubsub.close()
        client.close()
