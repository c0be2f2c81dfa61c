"""Client commands of `genq`: submit, status, results, cancel, jobs. HTTP only."""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import click

from genq.client import ApiClient, ApiError, parse_param, read_prompts_file
from genq.progress import ProgressBar
from shared.states import TERMINAL

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_FILE_NAME = "api-key"


def default_key() -> str | None:
    """The key `genq up` made for this data directory, if there is one."""
    path = Path(os.environ.get("GENQ_DATA_DIR", "var")) / KEY_FILE_NAME
    return path.read_text().strip() if path.exists() else None


def api_options(command):
    """--url and --key, from options or GENQ_URL / GENQ_API_KEY (else the key that
    `genq up` wrote into the data directory)."""

    @click.option("--url", envvar="GENQ_URL", default=DEFAULT_URL, show_default=True, help="genq API base URL")
    @click.option("--key", envvar="GENQ_API_KEY", default=None, help="API key (or GENQ_API_KEY)")
    @functools.wraps(command)
    def wrapper(url, key, **kwargs):
        try:
            return command(ApiClient(url, key or default_key()), **kwargs)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.command()
@click.option("--model", required=True)
@click.option("--prompt", "prompts", multiple=True, help="a prompt (repeatable)")
@click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="one prompt per line, or JSONL lines {\"prompt\": ..., \"seed\": ...}")
@click.option("--param", "params", multiple=True, help="a generation parameter, key=value (repeatable)")
@click.option("--priority", type=int, default=None)
@click.option("--wait", is_flag=True, help="show progress until the job finishes")
@api_options
def submit(client: ApiClient, model, prompts, prompts_file, params, priority, wait):
    """Submit a job; prints its id."""
    if bool(prompts) == bool(prompts_file):
        raise click.UsageError("give --prompt (one or more) or --prompts-file")
    field, entries = read_prompts_file(prompts_file) if prompts_file else ("prompts", list(prompts))
    body = {"model": model, field: entries}
    try:
        body["params"] = dict(parse_param(p) for p in params)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if priority is not None:
        body["priority"] = priority
    job_id = client.submit(body)["id"]
    click.echo(job_id)
    if wait:
        job = wait_with_progress(client, job_id)
        click.echo(f"{job_id} {job['state']}: {summary(job)}", err=True)
        if job["state"] != "succeeded":
            raise SystemExit(1)


def wait_with_progress(client: ApiClient, job_id: str, interval: float = 0.5) -> dict:
    job = client.job(job_id)
    bar = ProgressBar(job["counts"]["total"])
    while True:
        counts = job["counts"]
        bar.update(counts["succeeded"] + counts["failed"] + counts["cancelled"], job["state"])
        if job["state"] in TERMINAL:
            bar.close()
            return job
        time.sleep(interval)
        job = client.job(job_id)


def summary(job: dict) -> str:
    counts = job["counts"]
    parts = [f"{counts[k]} {k}" for k in ("succeeded", "failed", "cancelled", "running", "pending") if counts[k]]
    return ", ".join(parts) + (f" — {job['error']}" if job.get("error") else "")


@click.command()
@click.argument("job_id")
@api_options
def status(client: ApiClient, job_id):
    """Show a job's state and counts."""
    job = client.job(job_id)
    click.echo(f"{job['id']}  {job['model']}  {job['state']}  {job['progress']:.0%}  ({summary(job)})")


@click.command()
@click.argument("job_id")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="directory to write into")
@api_options
def results(client: ApiClient, job_id, out: Path):
    """Write a job's results: texts as results.jsonl, images as <index>.png."""
    out.mkdir(parents=True, exist_ok=True)
    texts, images = 0, 0
    with open(out / "results.jsonl", "w") as jsonl:
        for item in client.items(job_id):
            output = item["output"] or {}
            if "image_url" in output:
                (out / f"{item['index']:05d}.png").write_bytes(client.download(output["image_url"]))
                images += 1
            record = {k: item[k] for k in ("index", "state", "prompt", "seed", "error")}
            record["text"] = output.get("text")
            record["file"] = f"{item['index']:05d}.png" if "image_url" in output else None
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            texts += output.get("text") is not None
    click.echo(f"wrote {texts} texts and {images} images to {out}")


@click.command()
@click.argument("job_id")
@api_options
def cancel(client: ApiClient, job_id):
    """Cancel a job (finished items are kept)."""
    job = client.cancel(job_id)
    click.echo(f"{job['id']} {job['state']}")


@click.command()
@click.option("--state", default=None)
@click.option("--limit", default=20, show_default=True)
@api_options
def jobs(client: ApiClient, state, limit):
    """List recent jobs."""
    for job in client.jobs(state, limit):
        click.echo(f"{job['id']}  {job['created_at']}  {job['model']:16} {job['state']:10} {job['progress']:.0%}")


CLIENT_COMMANDS = [submit, status, results, cancel, jobs]
