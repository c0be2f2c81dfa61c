"""What a worker process tells watchers as it runs: progress inside the model
(`shared.progress`), the timing of each committed micro-batch (`shared.throughput`) and
counters for /metrics (`shared.tallies`), all in Redis. A worker process installs one
`Watch` at start (`install`); a runner reaches it through `watching`, the slice loop
through `slice_started` and `committed`. Each does nothing where none is installed (a
runner or a slice run alone, in a test or a notebook)."""
from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import redis

from shared.progress import NO_PROGRESS, ProgressBoard
from shared.queue import redis_client
from shared.tallies import Tallies
from shared.throughput import ThroughputLog

log = logging.getLogger(__name__)

# A slice that starts this soon after the last commit follows it: the gap (a release, a
# claim) is part of the work and counts as busy time; a longer one was idle time.
CONTIGUOUS_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 0.5  # a slow Redis costs a figure, never holds up the model


@dataclass
class Watch:
    progress: ProgressBoard
    throughput: ThroughputLog
    tallies: Tallies

    @classmethod
    def from_settings(cls, settings) -> "Watch":
        client = redis_client(settings.redis_url, SOCKET_TIMEOUT_SECONDS)
        return cls(
            progress=ProgressBoard(client, interval=settings.progress_interval_seconds,
                                   ttl=max(settings.lease_seconds, 10.0)),
            throughput=ThroughputLog(client, window=settings.throughput_window_seconds,
                                     liveness=settings.heartbeat_seconds * 2),
            tallies=Tallies(client),
        )


_installed: Watch | None = None
_busy_since: dict[int, float] = {}  # by process id: a forked child starts afresh


def install(watch: Watch | None) -> None:
    global _installed
    _installed = watch


def installed() -> Watch | None:
    return _installed


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def watching(items: Sequence[object]) -> Iterator:
    """Around one model call on `items`: yields the progress tracker the runner calls at
    each step or token, and clears the items' progress when the call ends."""
    watch = _installed
    tracker = NO_PROGRESS if watch is None else watch.progress.tracker(items)
    try:
        yield tracker
    finally:
        tracker.close()


def slice_started() -> None:
    """A worker starts a slice, its model loaded: unless it comes right after the last
    commit (a stream of slices), the time before it was idle (or loading the model, which
    is not what the model's throughput measures) and the busy clock starts now."""
    now, pid = time.time(), os.getpid()
    if now - _busy_since.get(pid, float("-inf")) > CONTIGUOUS_SECONDS:
        _busy_since[pid] = now


def committed(model: str, succeeded: int, failed: int) -> None:
    """A micro-batch's results are committed: record its items and the busy time since
    the previous commit (or the slice's start) for ETAs, and count them for /metrics."""
    watch = _installed
    now, pid = time.time(), os.getpid()
    since = _busy_since.get(pid, now)
    _busy_since[pid] = now
    if watch is None:
        return
    try:  # one round trip: the throughput sample and the counts share a pipeline (and a client)
        pipe = watch.tallies.redis.pipeline(transaction=False)
        watch.throughput.record(model, worker_name(), succeeded + failed, now - since, now=now, pipe=pipe)
        watch.tallies.items_finished(model, {"succeeded": succeeded, "failed": failed}, pipe)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not record the results of %s for watchers: %s", model, exc)
