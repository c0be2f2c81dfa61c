"""The Celery app and queue naming, shared by the web (which only sends wake-ups,
by task name) and the worker (which defines the task).

A wake-up carries nothing but a model name: it says "there is work for model M".
The worker claims the actual work from the database.
"""
from __future__ import annotations

import logging
from typing import Callable

import redis
from celery import Celery
from redis.client import Pipeline

WAKE_TASK = "genq.wake"
QUEUE_PREFIX = "model."
WAITING_MARK = "genq:wakeup-waiting:{model}"

log = logging.getLogger(__name__)


def redis_client(redis_url: str, timeout: float = 2.0) -> redis.Redis:
    """A client of `redis_url` that waits at most `timeout` seconds to connect or for a
    reply: the work is in the database, so Redis must never hold a caller up for long.
    Nothing connects until the first command, and a child forked after that opens its
    own connections (redis-py resets a pool it inherited)."""
    return redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def queue_name(model: str) -> str:
    return f"{QUEUE_PREFIX}{model}"


def make_celery(settings) -> Celery:
    """The Celery app, configured for long GPU slices.

    The Redis visibility timeout is longer than the hard time limit of a slice, so a
    slice that is still running is never delivered a second time. Reliability does not
    rest on redelivery anyway: leases in the database and the reconciler do that work.
    """
    app = Celery("genq", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options={
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "visibility_timeout": settings.broker_visibility_timeout,
            **settings.broker_transport_options,
        },
        task_soft_time_limit=settings.slice_soft_time_limit,
        task_time_limit=settings.slice_hard_time_limit,
        worker_max_memory_per_child=settings.worker_max_memory_per_child_mb * 1024 or None,
        task_publish_retry_policy={
            "max_retries": settings.publish_max_retries,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        task_default_queue=queue_name("default"),
    )
    return app


def send_wakeup(celery: Celery, model: str) -> bool:
    """Tell the workers of `model` there is work. False when the broker is unreachable:
    the work is already committed, and the reconciler will send the wake-up later."""
    try:
        celery.send_task(WAKE_TASK, args=[model], queue=queue_name(model))
        return True
    except Exception as exc:  # kombu raises several types for a broker that is down
        log.warning("could not send wake-up for model %s: %s", model, exc)
        return False


class Wakeups:
    """Sends wake-ups, with at most one waiting per model.

    A mark in Redis (beside the queue) says "a wake-up for M is waiting": `send` publishes
    only when it sets the mark, and a worker removes it (`taken`) as it takes a wake-up,
    before it claims. So every committed job still gets a worker: a job committed while
    the mark is set is committed before that wake-up's claim reads the ledger. The mark
    expires after `mark_seconds`, so a lost message costs at most that long (and the
    reconciler, which reads the queue itself, publishes with `force`).
    """

    def __init__(self, celery: Celery, redis_url: str, mark_seconds: float):
        self.celery = celery
        self.redis = redis_client(redis_url)
        self._mark_seconds = max(1, round(mark_seconds))

    def send(self, model: str, *, force: bool = False, also: Callable[[Pipeline], None] | None = None) -> bool:
        """True when a wake-up is waiting (this one or an earlier one); False when the
        broker is unreachable (the work is committed; the reconciler sends it later).
        `also(pipe)` queues more commands (a submit's counters) on the mark's round trip."""
        mark = WAITING_MARK.format(model=model)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(mark, 1, nx=not force, ex=self._mark_seconds)
            if also is not None:
                also(pipe)
            if not pipe.execute()[0]:
                return True
        except redis.RedisError as exc:
            log.warning("could not mark a wake-up for model %s as waiting: %s", model, exc)
        if send_wakeup(self.celery, model):
            return True
        self._forget(mark)
        return False

    def queued(self, models: list[str]) -> list[str]:
        """Those of `models` with a wake-up message in their queue (one round trip). All of
        them when Redis cannot be asked: a caller deciding whether others wait assumes so."""
        if not models:
            return []
        try:
            pipe = self.redis.pipeline(transaction=False)
            for model in models:
                pipe.llen(queue_name(model))
            return [model for model, length in zip(models, pipe.execute()) if length]
        except redis.RedisError as exc:
            log.warning("could not read the wake-up queues of %s: %s", ", ".join(models), exc)
            return list(models)

    def taken(self, model: str) -> None:
        """A worker took a wake-up for `model` and is about to claim: the next send publishes."""
        self._forget(WAITING_MARK.format(model=model))

    def _forget(self, mark: str) -> None:
        try:
            self.redis.delete(mark)
        except redis.RedisError as exc:  # the mark expires by itself
            log.warning("could not clear wake-up mark %s: %s", mark, exc)
