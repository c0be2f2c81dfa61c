"""Entry point of one worker process: `python -m worker.main --hostname gpu0@host --models a,b`.

The launcher (`genq worker`) starts one of these per GPU with CUDA_VISIBLE_DEVICES
already set in its environment.
"""
from __future__ import annotations

import argparse
import logging
import os

from shared.queue import queue_name
from shared.registry import load_registry
from shared.settings import get_settings
from shared.storage import storage_from_settings
from worker import context
from worker.app import make_worker_app
from worker.cache import ModelCache


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="worker.main")
    parser.add_argument("--hostname", required=True, help="Celery node name, e.g. gpu0@host")
    parser.add_argument("--models", default="", help="comma-separated model names (default: all in the registry)")
    parser.add_argument("--loglevel", default="INFO")
    return parser.parse_args(argv)


def device_for_this_process() -> str:
    """`cuda` when this process was given a GPU, else `cpu`. Reads the environment only:
    torch is imported later, in the pool child."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return "cuda" if visible not in ("", "-1") else "cpu"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("PGAPPNAME", f"genq-worker {args.hostname}")  # names its PostgreSQL sessions
    logging.basicConfig(level=args.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    registry = load_registry(settings.models_file)
    models = [m for m in args.models.split(",") if m] or registry.names()
    ctx = context.WorkerContext(
        settings=settings,
        registry=registry,
        storage=storage_from_settings(settings),
        celery=None,  # set by make_worker_app
        cache=ModelCache(device_for_this_process(), capacity=settings.worker_max_models, torch_threads=settings.torch_threads),
        name=args.hostname,
    )
    context.set_context(ctx)
    app = make_worker_app(ctx)
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            f"--hostname={args.hostname}",
            f"--queues={','.join(queue_name(m) for m in models)}",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
