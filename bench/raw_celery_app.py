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

app = Celery("bench-raw", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
)
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:  # made in the pool child, after the fork
        _client = redis.Redis.from_url(app.conf.broker_url)
    return _client


@app.task(name="bench.noop")
def noop(index: int) -> None:
    pipe = _redis().pipeline(transaction=False)
    pipe.incr(DONE_KEY)
    pipe.set(LAST_KEY, repr(time.time()))
    pipe.execute()
