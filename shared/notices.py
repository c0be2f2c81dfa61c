"""Notices: "the ledger of these jobs changed", published on Redis after the commit.

A notice carries job ids only, never state: whoever listens (the web's event streams,
`web.notice_hub`) re-reads the ledger, so a stream can only ever report what was
committed (DESIGN principle 8). Pub/sub delivers at most once and only to those
listening at that moment, which is enough for a wake-up: a stream also re-reads the
ledger every GENQ_EVENTS_HEARTBEAT_SECONDS, so a lost notice costs latency, never an
event, and a client that reconnects resumes from the ledger with its Last-Event-ID.

Publishing never fails the caller: the work is committed whether or not Redis hears it.
"""
from __future__ import annotations

import logging
import threading
from typing import Iterable

import redis

from shared.queue import redis_client

CHANNEL = "genq:notices"

log = logging.getLogger(__name__)


class Notices:
    """Publishes notices on `CHANNEL`; one per process and Redis URL (`notices_for`)."""

    def __init__(self, redis_url: str):
        self.redis = redis_client(redis_url)

    def publish(self, job_ids: Iterable[str], pipe=None) -> None:
        """Say that the ledger of `job_ids` changed (call after the commit). With `pipe`
        (a Redis pipeline on the same server), the notice is queued there: the caller
        executes it, with whatever else it sends."""
        message = encode(job_ids)
        if not message:
            return
        if pipe is not None:
            pipe.publish(CHANNEL, message)
            return
        try:
            self.redis.publish(CHANNEL, message)
        except redis.RedisError as exc:  # streams re-read the ledger on their heartbeat
            log.warning("could not publish a notice for jobs %s: %s", message, exc)


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
