"""The Celery app and queue naming, shared by the web (which only sends wake-ups,
by task name) and the worker (which defines the task).

A wake-up carries nothing but a model name: it says "there is work for model M".
The worker claims the actual work from the database.
"""
from __future__ import annotations

import logging

from celery import Celery

WAKE_TASK = "genq.wake"
QUEUE_PREFIX = "model."

log = logging.getLogger(__name__)


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
