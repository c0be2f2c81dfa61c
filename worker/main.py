"""Entry point of one worker process: `python -m worker.main --hostname gpu0@host --models a,b`.

The launcher (`genq worker`) starts one of these per GPU with CUDA_VISIBLE_DEVICES
already set in its environment. A process pinned to a GPU first checks (in a
subprocess, see `worker.device`) that torch can use exactly one device, and exits
non-zero with the reason when it cannot.
"""
from __future__ import annotations

import logging
import os

import click
from celery.signals import task_failure

from shared import watch
from shared.ledger import Ledger
from shared.queue import queue_name
from shared.registry import load_registry
from shared.settings import get_settings
from shared.storage import storage_from_settings
from worker import context
from worker.app import make_worker_app
from worker.cache import ModelCache
from worker.device import exit_if_device_broken, pinned_device_problem


def device_for_this_process() -> str:
    """`cuda` when this process was given a GPU, else `cpu`. Reads the environment only:
    torch is imported later, in the pool child."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return "cuda" if visible not in ("", "-1") else "cpu"


@click.command()
@click.option("--hostname", required=True, help="Celery node name, e.g. gpu0@host")
@click.option("--models", default="", help="comma-separated model names (default: all in the registry)")
@click.option("--loglevel", default="INFO", show_default=True)
def main(hostname: str, models: str, loglevel: str) -> None:
    os.environ.setdefault("PGAPPNAME", f"genq-worker {hostname}")  # names its PostgreSQL sessions
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = device_for_this_process()
    problem = pinned_device_problem() if device == "cuda" else None
    if problem:
        raise click.ClickException(f"worker {hostname}: {problem}")
    settings = get_settings()
    registry = load_registry(settings.models_file)
    served = [m for m in models.split(",") if m] or registry.names()
    ctx = context.WorkerContext(
        settings=settings,
        registry=registry,
        storage=storage_from_settings(settings),
        celery=None,  # set by make_worker_app
        cache=ModelCache.from_settings(device, settings),
        ledger=Ledger(settings.database_url),
        name=hostname,
        models=tuple(served),
    )
    context.set_context(ctx)
    watch.install(watch.Watch.from_settings(settings))  # progress, throughput and counts for watchers (Redis)
    app = make_worker_app(ctx)
    task_failure.connect(exit_if_device_broken, weak=False)  # a broken GPU ends the pool process
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            f"--hostname={hostname}",
            f"--queues={','.join(queue_name(m) for m in served)}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
