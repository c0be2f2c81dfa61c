"""What a worker process tells watchers as it runs: progress inside the model
(`shared.progress`), the timing of each committed micro-batch (`shared.throughput`) and
counters for /metrics (`shared.tallies`), all in Redis. A worker process installs one
`Watch` at start (`install`); a runner reaches it through `watching`, the slice loop
through `slice_started`, `claimed` and `committed`; the model cache, out-of-memory
halving, lease expiry and the reconciler through their own counters. Each does nothing
where none is installed (a runner or a slice run alone, in a test or a notebook)."""
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


def committed(model: str, succeeded: int, failed: int, pipe=None) -> None:
    """A micro-batch's results are committed: record its items and the busy time since
    the previous commit (or the slice's start) for ETAs, and count them for /metrics.
    With `pipe` (a pipeline on the same Redis), the figures are queued there for the
    caller to send with its own."""
    now, pid = time.time(), os.getpid()
    since = _busy_since.get(pid, now)
    _busy_since[pid] = now

    def add(tallies: Tallies, pipe) -> None:  # the throughput sample and the counts: one round trip
        _installed.throughput.record(model, worker_name(), succeeded + failed, now - since, now=now, pipe=pipe)
        tallies.items_finished(model, {"succeeded": succeeded, "failed": failed}, pipe)
        tallies.observe("item_run_seconds", (model,), now - since, pipe, count=succeeded + failed)

    _count(add, pipe)


def claimed(model: str, items: Sequence, waited: dict[str, float], pipe=None) -> None:
    """A slice was claimed: each item waited `waited[item.job_id]` seconds since its job's
    submission (clocks of two hosts: never below zero). With `pipe` (a pipeline on the
    same Redis), the figures are queued there for the caller to send with its own."""
    seconds = [max(0.0, waited[item.job_id]) for item in items if item.job_id in waited]
    _count(lambda tallies, pipe: tallies.observe_each("item_queue_wait_seconds", (model,), seconds, pipe), pipe)


def model_loaded(model: str, seconds: float) -> None:
    _count(lambda tallies, pipe: tallies.observe("model_load_seconds", (model,), seconds, pipe))


def out_of_memory_halved(model: str) -> None:
    """A micro-batch of `model` ran out of device memory and is split in halves."""
    _count(lambda tallies, pipe: tallies.add("oom_halvings", (model,), 1, pipe))


def webhook_attempted(event: str, result: str) -> None:
    """A webhook delivery attempt of `event` ended `delivered`, `retrying` or `failed` (for good)."""
    _count(lambda tallies, pipe: tallies.add("webhook_attempts", (event, result), 1, pipe))


def leases_expired(items: int) -> None:
    """`items` running items were found with an expired lease, or held by a dead process,
    and given back (or failed)."""
    if items:
        _count(lambda tallies, pipe: tallies.add("leases_expired", (), items, pipe))


def repaired(repairs: dict[str, int]) -> None:
    """What a reconciler pass fixed, by kind of repair."""
    done = {kind: amount for kind, amount in repairs.items() if amount}

    def add(tallies, pipe):
        for kind, amount in done.items():
            tallies.add("reconciler_repairs", (kind,), amount, pipe)
    if done:
        _count(add)


def _count(add, pipe=None) -> None:
    """Queue `add(tallies, pipe)` on one pipeline and send it, where a watch is installed;
    a Redis error costs the figure, never the work. With `pipe` (a pipeline on the same
    Redis), the figures are only queued there: its owner sends them with its own."""
    watch = _installed
    if watch is None:
        return
    if pipe is not None:
        add(watch.tallies, pipe)
        return
    try:
        pipe = watch.tallies.redis.pipeline(transaction=False)
        add(watch.tallies, pipe)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not send figures for ETAs and /metrics: %s", exc)
