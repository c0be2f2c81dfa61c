"""`genq` commands. Imports stay inside commands so light commands start fast."""
from __future__ import annotations

import os
import sys

import click


@click.group()
def main() -> None:
    """genq: a self-hosted backend for long-running generation jobs."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", "processes", default=2, show_default=True, type=int, help="gunicorn worker processes")
def web(host: str, port: int, processes: int) -> None:
    """Serve the HTTP API with gunicorn."""
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{host}:{port}",
        "--workers", str(processes),
        "--access-logfile", "-",
        "web.app:create_app()",
    ]
    os.execv(sys.executable, argv)


@main.command()
@click.option("--gpus", default="all", show_default=True, help="'all', 'none' (one CPU worker) or indices like 0,1")
@click.option("--models", default="", help="comma-separated models to serve (default: all in the registry)")
def worker(gpus: str, models: str) -> None:
    """Start one Celery worker process per GPU, each pinned to its device."""
    from worker.launcher import LaunchError, choose_gpus, run_workers, visible_gpus, worker_commands

    try:
        chosen = choose_gpus(gpus, visible_gpus())
    except LaunchError as exc:
        raise click.ClickException(str(exc)) from None
    commands = worker_commands(chosen, [m for m in models.split(",") if m])
    for command in commands:
        click.echo(f"starting worker {command.name} (CUDA_VISIBLE_DEVICES={command.env['CUDA_VISIBLE_DEVICES']!r})")
    sys.exit(run_workers(commands))


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations to the configured database."""
    from migrations import upgrade
    from shared.settings import get_settings

    settings = get_settings()
    if settings.database_url.startswith("sqlite:///"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url, revision)
    click.echo(f"database at {_redacted(settings.database_url)} is at {revision}")


@main.group()
def models() -> None:
    """The model registry."""


@models.command("list")
def models_list() -> None:
    """Show the models of the registry and whether their weights are on this machine."""
    from shared.errors import ConfigError
    from shared.registry import load_registry
    from shared.settings import get_settings

    try:
        registry = load_registry(get_settings().models_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for spec in registry:
        where = spec.local_source() or f"hf:{spec.source}"
        click.echo(f"{spec.name:24} {spec.task.value:20} micro-batch {spec.micro_batch_size:<4} {where}")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
