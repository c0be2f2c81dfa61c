"""Counters and histograms for /metrics, kept in Redis.

Why Redis and not each process's own memory: the web runs as several gunicorn processes
and the workers as Celery pool children, possibly on other hosts, and a process that is
recycled would take its counts with it. Every process adds to the same Redis hashes (one
pipelined round trip per event: an HINCRBY or two), so one scrape of any web process
reads the whole deployment's counts with a few HGETALLs, whatever the ledger holds.
Counts survive process restarts but not a Redis restart without persistence; Prometheus
reads a counter that went back to zero as a reset, which is what `rate()` expects.

HTTP request timings are the exception to "one round trip per event": a web process
serves hundreds of polls a second, so it keeps them in memory and adds them to Redis in
one pipeline at most once a second (`RequestTimings`): a poll never waits on Redis, and
a Redis outage costs one timeout a second instead of one per request.
"""
from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field

import redis

PREFIX = "genq:metrics:"
SEP = "\t"
# Request latency buckets (seconds): a poll takes milliseconds, a large submit ~1 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # items per committed micro-batch
# An item's run time: a tiny model's micro-batch takes milliseconds, a large image one minutes.
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Queue wait: from a job's submission to its item's claim, a moment to a day in a long batch.
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)  # a model's load

COUNTERS = {
    "items_finished": ("model", "state"),
    "jobs_submitted": ("model",),
    "items_submitted": ("model",),
    "oom_halvings": ("model",),  # a micro-batch that ran out of device memory, split and run again
    "leases_expired": (),  # running items whose lease expired or whose process died, given back or failed at the cap
    "reconciler_repairs": ("repair",),  # what a reconciler pass fixed (see worker.reconciler)
    "webhook_attempts": ("event", "result"),  # each delivery attempt: delivered, retrying or failed (for good)
}
# name: (labels, buckets); each a hash of "<labels>\t<bucket index>" and "<labels>\tsum".
HISTOGRAMS = {
    "http_request_duration_seconds": (("method", "route", "status"), LATENCY_BUCKETS),
    "micro_batch_items": (("model",), BATCH_BUCKETS),
    "item_run_seconds": (("model",), RUN_BUCKETS),
    "item_queue_wait_seconds": (("model",), WAIT_BUCKETS),
    "model_load_seconds": (("model",), LOAD_BUCKETS),
}


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    buckets: list[int]  # per bound, then +Inf; not cumulative
    sum: float = 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip((*(str(float(b)) for b in self.bounds), "+Inf"), self.buckets):
            total += count
            out.append((bound, total))
        return out


@dataclass
class Counts:
    counters: dict[str, dict[tuple[str, ...], int]] = field(default_factory=dict)
    histograms: dict[str, dict[tuple[str, ...], Histogram]] = field(default_factory=dict)


class Tallies:
    def __init__(self, client: redis.Redis):
        self.redis = client

    def add(self, name: str, labels: tuple[str, ...], amount: int = 1, pipe=None) -> None:
        target = pipe if pipe is not None else self.redis
        target.hincrby(PREFIX + name, SEP.join(labels), amount)

    def job_submitted(self, model: str, items: int, pipe=None) -> None:
        """A job of `items` items was accepted (queued on `pipe` when given: the caller
        executes it)."""
        target = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        self.add("jobs_submitted", (model,), 1, target)
        self.add("items_submitted", (model,), items, target)
        if pipe is None:
            target.execute()

    def items_finished(self, model: str, counts: dict[str, int], pipe=None) -> None:
        """A micro-batch's results are committed: its items by state, and its size
        (queued on `pipe` when given: the caller executes it)."""
        target = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        for state, amount in counts.items():
            if amount:
                self.add("items_finished", (model, state), amount, target)
        self.observe("micro_batch_items", (model,), sum(counts.values()), target)
        if pipe is None:
            target.execute()

    def observe(self, name: str, labels: tuple[str, ...], value: float, pipe, count: int = 1) -> None:
        """`count` observations of `value` (the items of one micro-batch share its run time)."""
        if count > 0:
            self.add_histogram(name, labels, {bucket_of(name, value): count}, value * count, pipe)

    def observe_each(self, name: str, labels: tuple[str, ...], values: list[float], pipe) -> None:
        """Observations of several values, sorted into buckets here: one HINCRBY per bucket."""
        buckets: dict[int, int] = {}
        for value in values:
            bucket = bucket_of(name, value)
            buckets[bucket] = buckets.get(bucket, 0) + 1
        if buckets:
            self.add_histogram(name, labels, buckets, sum(values), pipe)

    def add_histogram(self, name: str, labels: tuple[str, ...], buckets: dict[int, int], total: float, pipe) -> None:
        """Add observations already sorted into buckets (index -> count) and their sum."""
        key, joined = PREFIX + name, SEP.join(labels)
        for bucket, count in buckets.items():
            pipe.hincrby(key, f"{joined}{SEP}{bucket}", count)
        pipe.hincrbyfloat(key, f"{joined}{SEP}sum", total)

    def read(self) -> Counts:
        pipe = self.redis.pipeline(transaction=False)
        for name in (*COUNTERS, *HISTOGRAMS):
            pipe.hgetall(PREFIX + name)
        replies = pipe.execute()
        counts = Counts()
        for name, raw in zip(COUNTERS, replies):
            width = len(COUNTERS[name])
            counts.counters[name] = {
                _labels(key): int(value) for key, value in raw.items() if len(_labels(key)) == width
            }
        for name, raw in zip(HISTOGRAMS, replies[len(COUNTERS):]):
            counts.histograms[name] = _histograms(raw, *HISTOGRAMS[name])
        return counts


def _labels(key: bytes) -> tuple[str, ...]:
    text = key.decode()
    return tuple(text.split(SEP)) if text else ()  # a counter without labels is kept under ""


def bucket_of(name: str, value: float) -> int:
    return bisect.bisect_left(HISTOGRAMS[name][1], value)


class RequestTimings:
    """This process's HTTP request timings, added to Redis (`Tallies`) in one pipeline at
    most every `interval` seconds, by whichever request comes due, or by `flush`."""

    NAME = "http_request_duration_seconds"

    def __init__(self, tallies: Tallies, interval: float = 1.0):
        self.tallies, self.interval = tallies, interval
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, ...], tuple[dict[int, int], float]] = {}
        self._due = time.monotonic() + interval

    def served(self, method: str, route: str, status: int, seconds: float) -> None:
        labels, bucket = (method, route, str(status)), bucket_of(self.NAME, seconds)
        with self._lock:
            buckets, total = self._pending.get(labels, ({}, 0.0))
            buckets[bucket] = buckets.get(bucket, 0) + 1
            self._pending[labels] = (buckets, total + seconds)
            due = time.monotonic() >= self._due
        if due:
            self.flush()

    def flush(self) -> None:
        """Write what is pending (raises `redis.RedisError`; what it held is then dropped)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._due = time.monotonic() + self.interval
        if not pending:
            return
        pipe = self.tallies.redis.pipeline(transaction=False)
        for labels, (buckets, total) in pending.items():
            self.tallies.add_histogram(self.NAME, labels, buckets, total, pipe)
        pipe.execute()


def _histograms(raw: dict[bytes, bytes], labels: tuple[str, ...], bounds: tuple[float, ...]) -> dict:
    out: dict[tuple[str, ...], Histogram] = {}
    for key, value in raw.items():
        *label_values, field_name = key.decode().split(SEP)
        if len(label_values) != len(labels):
            continue
        histogram = out.setdefault(tuple(label_values), Histogram(bounds, [0] * (len(bounds) + 1)))
        if field_name == "sum":
            histogram.sum = float(value)
        elif field_name.isdigit() and int(field_name) <= len(bounds):
            histogram.buckets[int(field_name)] = int(value)
    return out
