"""Entry point of one worker process: `python -m worker.main --hostname gpu0@host --models a,b`.

The launcher (`genq worker`) starts one of these per GPU with CUDA_VISIBLE_DEVICES
already set in its environment.
"""
from __future__ import annotations

import logging
import os

import click

from shared.ledger import Ledger
from shared.queue import queue_name
from shared.registry import load_registry
from shared.settings import get_settings
from shared.storage import storage_from_settings
from worker import context
from worker.app import make_worker_app
from worker.cache import ModelCache


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
    settings = get_settings()
    registry = load_registry(settings.models_file)
    served = [m for m in models.split(",") if m] or registry.names()
    ctx = context.WorkerContext(
        settings=settings,
        registry=registry,
        storage=storage_from_settings(settings),
        celery=None,  # set by make_worker_app
        cache=ModelCache(device_for_this_process(), capacity=settings.worker_max_models, torch_threads=settings.torch_threads),
        ledger=Ledger(settings.database_url),
        name=hostname,
    )
    context.set_context(ctx)
    app = make_worker_app(ctx)
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
