"""`genq` commands. Imports stay inside commands so light commands start fast."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click


class GenqCommands(click.Group):
    """A configuration error of any command is its message and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        from shared.errors import ConfigError

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=GenqCommands)
def main() -> None:
    """genq: a self-hosted backend for long-running generation jobs."""


@main.command()
@click.option("--port", default=None, type=int, help="web port (default GENQ_WEB_PORT, 8000)")
@click.option("--gpus", default="all", show_default=True, help="'all', 'none' or indices like 0,1")
def up(port: int | None, gpus: str) -> None:
    """Bring the whole service up on this machine (Redis, database, workers, web)."""
    from genq.up import Up, UpError
    from shared.errors import ConfigError
    from shared.settings import get_settings

    try:
        sys.exit(Up(get_settings(), port, gpus).run())
    except (UpError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--host", default=None, help="bind address (default GENQ_WEB_HOST, 127.0.0.1)")
@click.option("--port", default=None, type=int, help="port (default GENQ_WEB_PORT, 8000)")
@click.option("--workers", "processes", default=None, type=int, help="gunicorn worker processes (default GENQ_WEB_PROCESSES)")
@click.option("--access-log", default="-", show_default=True, help="access log file ('-' for standard output)")
def web(host: str | None, port: int | None, processes: int | None, access_log: str) -> None:
    """Serve the HTTP API with gunicorn."""
    from shared.settings import get_settings

    settings = get_settings()
    host = host or settings.web_host
    port = settings.web_port if port is None else port
    processes = processes or settings.web_processes
    refuse_open_access(settings, host)
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{host}:{port}",
        "--workers", str(processes),
        "--worker-class", "gthread",  # event streams park in threads of their own (web.events says why)
        "--threads", str(settings.web_threads + settings.events_max_streams),
        "--access-logfile", access_log,
        "--config", "python:web.gunicorn_config",
        "web.app:create_app()",
    ]
    os.execv(sys.executable, argv)


@main.command()
@click.option("--gpus", default="all", show_default=True,
              help="'all', 'none' (one CPU worker) or indices like 0,1 (of nvidia-smi, or of a CUDA_VISIBLE_DEVICES already set)")
@click.option("--models", default="", help="comma-separated models to serve (default: all in the registry)")
@click.option("--per-gpu", default=1, show_default=True, type=click.IntRange(min=1),
              help="worker processes per GPU (a small model), or CPU workers with --gpus none")
def worker(gpus: str, models: str, per_gpu: int) -> None:
    """Start one Celery worker process per GPU (or --per-gpu of them), each pinned to its device."""
    from worker.launcher import LaunchError, choose_gpus, discover_devices, run_workers, worker_commands

    try:
        chosen = choose_gpus(gpus, [] if gpus.strip().lower() in ("none", "cpu") else discover_devices())
    except LaunchError as exc:
        raise click.ClickException(str(exc)) from None
    commands = worker_commands(chosen, [m for m in models.split(",") if m], per_device=per_gpu)
    for command in commands:
        click.echo(f"starting worker {command.name} (CUDA_VISIBLE_DEVICES={command.env['CUDA_VISIBLE_DEVICES']!r})")
    sys.exit(run_workers(commands))


@main.command()
@click.option("--interval", default=None, type=float, help="seconds between passes (default GENQ_RECONCILE_INTERVAL_SECONDS)")
@click.option("--once", is_flag=True, help="run one pass and exit")
def reconcile(interval: float | None, once: bool) -> None:
    """Find work nobody is doing (expired leases, lost wake-ups) and restart it."""
    import logging

    from shared.queue import make_celery
    from shared.settings import get_settings
    from shared.storage import storage_from_settings
    from worker.reconciler import reconcile_once, run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if once:
        click.echo(reconcile_once(settings, make_celery(settings), storage_from_settings(settings)))
        return
    run_forever(settings, interval or settings.reconcile_interval_seconds)


def refuse_open_access(settings, host: str) -> None:
    """GENQ_AUTH=off is for loopback-only development: never serve it to a network."""
    from web.auth import is_loopback

    if settings.auth == "off" and not is_loopback(host):
        raise click.ClickException(f"GENQ_AUTH=off is refused when binding {host}: it is for loopback addresses only")


@main.group()
def keys() -> None:
    """API keys and tenants."""


@keys.command("create")
@click.option("--tenant", required=True, help="the tenant whose jobs the key sees")
@click.option("--admin", is_flag=True, help="the key sees every tenant (for operators)")
@click.option("--label", default=None, help="a note to recognise the key by")
def keys_create(tenant: str, admin: bool, label: str | None) -> None:
    """Create a key and print it (it is shown this once)."""
    from shared.db import session_scope
    from shared.errors import GenqError
    from shared.keys import create_api_key
    from shared.settings import get_settings

    try:
        with session_scope(get_settings().database_url) as session:
            row, key = create_api_key(session, tenant, admin=admin, label=label)
    except GenqError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(key)
    click.echo(f"created key {row.prefix} for tenant {tenant}{' (admin)' if admin else ''}; it is not shown again", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys (prefix, tenant, admin, created, revoked); never the keys themselves."""
    from shared.db import session_scope
    from shared.keys import list_api_keys
    from shared.settings import get_settings

    with session_scope(get_settings().database_url) as session:
        for row in list_api_keys(session):
            revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            click.echo(f"{row.prefix}  {row.tenant:20} {'admin' if row.admin else 'user ':5}  "
                       f"created {row.created_at:%Y-%m-%d %H:%M}  {revoked}  {row.label or ''}")


@keys.command("revoke")
@click.argument("prefix")
def keys_revoke(prefix: str) -> None:
    """Revoke the key with this prefix (as `genq keys list` shows it)."""
    from shared.db import session_scope
    from shared.errors import GenqError
    from shared.keys import revoke_api_key
    from shared.settings import get_settings

    try:
        with session_scope(get_settings().database_url) as session:
            revoke_api_key(session, prefix)
    except GenqError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"revoked {prefix}")


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
    """Show the models of the registry and whether their weights are on this machine.

    A model without them does not stop `genq up`: /v1/models marks it unavailable and a
    job for it is refused, until its weights are installed (no restart needed)."""
    from shared.errors import ConfigError
    from shared.model_files import hub_cache_dir, weights_of
    from shared.registry import load_registry
    from shared.settings import get_settings

    try:
        registry = load_registry(get_settings().models_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    missing = []
    for spec in registry:
        weights = weights_of(spec)
        state = "ready" if weights.available else "MISSING"
        click.echo(f"{spec.name:16} {spec.task.value:16} micro-batch {spec.micro_batch_size:<4} {state:7} "
                   f"{spec.source}")
        if not weights.available:
            missing.append((spec, weights))
            click.echo(f"{'':16} {weights.reason}: {weights.where}")
    if missing:
        click.echo("")
        for line in fetch_advice(missing, hub_cache_dir()):
            click.echo(line)


def fetch_advice(missing: list, cache_dir: Path) -> list[str]:
    """How to get the weights `genq models list` found missing: demo models are built
    here; Hub models are fetched on a machine with network access and their cache copied."""
    from worker.demo import DEMO_MODELS

    lines = [f"{len(missing)} of the models lack their weights on this machine: /v1/models marks them unavailable "
             "and refuses their jobs (genq up starts all the same)."]
    demos = [spec.name for spec, _weights in missing if spec.name in DEMO_MODELS]
    if demos:
        lines.append(f"  {', '.join(demos)}: built by genq up on first start, or now by: "
                     f"genq models build-demo {' '.join('--only=' + name for name in demos)}")
    fetches = [weights.fetch for _spec, weights in missing if weights.fetch]
    if fetches:
        lines.append("  On a machine with network access (pip install huggingface_hub; older versions name the "
                     "command huggingface-cli download):")
        lines += [f"    {command}" for command in fetches]
        lines.append(f"  then copy the folders models--* of its Hugging Face cache (~/.cache/huggingface/hub) "
                     f"into {cache_dir}")
        lines.append("  (or point HF_HOME / HF_HUB_CACHE at a copy). genq reads them offline; no restart is needed.")
    others = [spec.name for spec, weights in missing if not weights.fetch and spec.name not in DEMO_MODELS]
    if others:
        lines.append(f"  {', '.join(others)}: put the model directory where its source names, or fix the source.")
    return lines


@models.command("build-demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="directory for demo-text/, demo-image/, demo-dcgan/ and demo-vae/ (default <data dir>/models)")
@click.option("--quick", is_flag=True, help="a few training steps only (for tests)")
@click.option("--only", multiple=True, help="build only this demo model (repeatable; default: all of them)")
def models_build_demo(out: Path | None, quick: bool, only: tuple[str, ...]) -> None:
    """Train the demo models on this machine's CPU (about 5 minutes) and save them."""
    from shared.settings import get_settings
    from worker.demo import build_demo_models

    out = out or get_settings().data_dir / "models"
    try:
        figures = build_demo_models(out, quick=quick, progress=lambda line: click.echo(line), only=only or None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for name, quality in figures.items():
        click.echo(f"{name}: {quality}")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _register_commands() -> None:
    """The commands kept in modules of their own: the API's clients, and `genq webhooks`."""
    from genq.client_cli import CLIENT_COMMANDS
    from genq.webhooks_cli import webhooks

    for command in [*CLIENT_COMMANDS, webhooks]:
        main.add_command(command)


_register_commands()
