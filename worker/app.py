"""The worker's Celery app: the one task, `genq.wake`, and process hooks.

Pool choice: prefork with one child process (concurrency 1 per GPU). The parent
process never imports torch (the runner modules import it when a model is loaded,
which happens in the child), so CUDA is never initialised in a process that forks.
Prefork gives us what solo cannot: a child killed by the kernel's OOM killer is
detected (WorkerLostError) and its message rejected back to the queue, and hard time
limits and memory recycling (`max_memory_per_child`) work. The price is one extra
process and a fork at start.
"""
from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from shared.db import dispose_engines
from shared.processes import die_with_parent, freeze_heap
from shared.queue import WAKE_TASK, Wakeups, make_celery
from worker import context
from worker.slices import handle_wakeup

log = logging.getLogger(__name__)


def make_worker_app(ctx: context.WorkerContext) -> Celery:
    app = make_celery(ctx.settings)
    ctx.celery = app
    ctx.wakeups = Wakeups(app, ctx.settings.redis_url, ctx.settings.wakeup_mark_seconds)

    @app.task(name=WAKE_TASK, ignore_result=True)
    def wake(model: str) -> dict | None:
        report = handle_wakeup(context.current(), model)
        return None if report is None else report.summary()

    worker_process_init.connect(_fresh_connections_after_fork, weak=False)
    worker_ready.connect(_wake_own_models, weak=False)
    return app


def _fresh_connections_after_fork(**_kwargs) -> None:
    """A forked child must not share the parent's database connections, and must not
    outlive its parent (a pool child left alone would hold its claim's lease). What it
    inherited stays for its life: frozen out of full collections, as each model it loads
    will be (`shared.processes.freeze_heap`)."""
    die_with_parent()
    dispose_engines()
    freeze_heap()
    context.current().cache.freeze_loaded = True


def _wake_own_models(**_kwargs) -> None:
    """On start, send a wake-up for each served model that has work waiting
    (covers work submitted while no worker or no Redis was up)."""
    context.current().wake_models_with_work()
