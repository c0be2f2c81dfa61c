"""How fast a model goes: what ETAs divide by.

Each worker process records, as the results of each micro-batch of a model are committed,
when, how many items finished and how long it was busy with them: since its previous
commit, or since the start of its slice when it was idle before (`shared.watch`), so
claims, commits and file writes count as the work they are. The samples of the last `window` seconds live in
a Redis sorted set per model (score: the time), trimmed as they are written, so reading
them costs the window, never the ledger's history.

From them: the rate of one busy worker (items over busy seconds, all samples of the
window), and the live workers serving the model: processes whose last sample is recent —
within twice their longest micro-batch, at least `liveness` seconds. A worker that died or
moved to another model stops counting within that time; one that joins counts from its
first micro-batch. The model's throughput is the two multiplied.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import redis

logger = logging.getLogger(__name__)

KEY = "genq:throughput:{model}"
MAX_SAMPLES = 5000  # per model: a bound on what one read costs, whatever the rate


@dataclass(frozen=True)
class Throughput:
    rate_per_worker: float | None  # items per second of one busy worker; None: nothing measured
    workers: int  # live workers serving the model
    samples: int

    @property
    def items_per_second(self) -> float | None:
        if self.rate_per_worker is None or self.workers == 0:
            return None
        return self.rate_per_worker * self.workers


class ThroughputLog:
    def __init__(self, client: redis.Redis, *, window: float = 300.0, liveness: float = 30.0):
        self.redis = client
        self.window = window
        self.liveness = liveness

    def record(self, model: str, worker: str, items: int, seconds: float, now: float | None = None,
               pipe=None) -> None:
        """One micro-batch of `items` done by `worker` in `seconds` of busy time (queued
        on `pipe` when given: the caller executes it)."""
        if items <= 0 or seconds <= 0:
            return
        now = time.time() if now is None else now
        key = KEY.format(model=model)
        member = f"{now:.6f}|{worker}|{items}|{seconds:.6f}|{uuid.uuid4().hex[:8]}"
        target = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        target.zadd(key, {member: now})
        target.zremrangebyscore(key, "-inf", now - self.window)
        target.zremrangebyrank(key, 0, -MAX_SAMPLES - 1)
        target.expire(key, max(1, round(self.window)))
        if pipe is None:
            target.execute()

    def measure(self, model: str, now: float | None = None) -> Throughput:
        return self.measure_all([model], now)[model]

    def measure_all(self, models: list[str], now: float | None = None) -> dict[str, Throughput]:
        """Each model's throughput, read in one round trip (a /metrics scrape names the
        registry's models instead of searching Redis' keyspace for them)."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        for model in models:
            pipe.zrangebyscore(KEY.format(model=model), now - self.window, "+inf")
        return {model: summarise(raw, now, self.liveness) for model, raw in zip(models, pipe.execute())}


def summarise(raw: list[bytes], now: float, liveness: float) -> Throughput:
    items = busy = 0.0
    last_seen: dict[str, float] = {}
    longest: dict[str, float] = {}
    count = 0
    for member in raw:
        try:
            at, worker, n, seconds, _ = member.decode().split("|")
            at_f, n_f, seconds_f = float(at), float(n), float(seconds)
        except ValueError:
            continue
        count += 1
        items += n_f
        busy += seconds_f
        last_seen[worker] = max(last_seen.get(worker, 0.0), at_f)
        longest[worker] = max(longest.get(worker, 0.0), seconds_f)
    live = sum(1 for worker, at in last_seen.items() if now - at <= max(liveness, 2 * longest[worker]))
    return Throughput(items / busy if busy > 0 else None, live, count)


def estimate(log: ThroughputLog, model: str, items: int, *, exact: bool = True,
             one_worker_at_least: bool = False) -> tuple[float | None, str | None]:
    """(seconds until `items` more items of `model` are done, why there is no estimate
    or why it is only a lower bound): the reasons are those `eta_reason` documents.
    `one_worker_at_least`: with no live worker, count one at the measured rate (items
    whose lease will expire go to whichever worker claims next)."""
    try:
        throughput = log.measure(model)
    except redis.RedisError as exc:
        logger.warning("could not read the throughput of %s: %s", model, exc)
        return None, "unavailable"
    if throughput.rate_per_worker is None:
        return None, "not_measured"
    workers = throughput.workers or int(one_worker_at_least)
    if workers == 0:
        return None, "no_live_worker"
    return items / (throughput.rate_per_worker * workers), None if exact else "lower_bound"
