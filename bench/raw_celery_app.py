"""The broker under genq, measured alone: a Celery app with one no-op task, configured
as genq's own app is (JSON, late acks, prefetch 1, no result backend; the worker runs
one prefork child).

The task's only work is to record that it ran: one pipelined INCR + SET on the same
Redis, so the client can count completions and read when the last one finished
without a result backend (whose per-task pub/sub subscription is not safe to share
between submitting threads).

The broker URL comes from BENCH_REDIS_URL, which bench/overhead.py sets for the worker
subprocess it starts (`celery -A bench.raw_celery_app worker`); the client in
overhead.py sets `app.conf.broker_url` itself.
"""
from __future__ import annotations

import os
import time

import redis
from celery import Celery

QUEUE = "bench.raw"
DONE_KEY = "bench:done"
LAST_KEY = "bench:last"



def bench_app(name: str, queue: str) -> Celery:
    """A Celery app configured as genq's own is (JSON, late acks, prefetch 1, no result
    backend), on the broker named by BENCH_REDIS_URL; bench/tutorial_celery_app.py uses it too."""
    celery = Celery(name, broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_default_queue=queue,
    )
    return celery


class RedisClient:
    """The app's broker as a Redis client, made on first use (in the pool child, after the fork)."""

    def __init__(self, celery: Celery):
        self._celery = celery
        self._client: redis.Redis | None = None

    def __call__(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self._celery.conf.broker_url)
        return self._client


def record_done(client: redis.Redis, done_key: str, last_key: str, pipe=None) -> None:
    """Count one completion and note its time, in one round trip (with `pipe`'s commands)."""
    pipe = pipe or client.pipeline(transaction=False)
    pipe.incr(done_key)
    pipe.set(last_key, repr(time.time()))
    pipe.execute()


app = bench_app("bench-raw", QUEUE)
_redis = RedisClient(app)


@app.task(name="bench.noop")
def noop(index: int) -> None:
    record_done(_redis(), DONE_KEY, LAST_KEY)
