"""Client commands of `genq`: submit, status, results, cancel, jobs. HTTP only."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from genq.client import DEFAULT_URL, Client, ClientError, Job, parse_param, read_prompts_file


def api_options(command):
    """--url and --key, from options or GENQ_URL / GENQ_API_KEY (else the key that
    `genq up` wrote into the data directory)."""

    @click.option("--url", envvar="GENQ_URL", default=DEFAULT_URL, show_default=True, help="genq API base URL")
    @click.option("--key", envvar="GENQ_API_KEY", default=None, help="API key (or GENQ_API_KEY)")
    @functools.wraps(command)
    def wrapper(url, key, **kwargs):
        try:
            return command(Client(url, key), **kwargs)
        except ClientError as exc:
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
def submit(client: Client, model, prompts, prompts_file, params, priority, wait):
    """Submit a job; prints its id."""
    if bool(prompts) == bool(prompts_file):
        raise click.UsageError("give --prompt (one or more) or --prompts-file")
    field, entries = read_prompts_file(prompts_file) if prompts_file else ("prompts", list(prompts))
    try:
        parameters = dict(parse_param(p) for p in params)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    job = client.submit(model, **{field: entries}, params=parameters, priority=priority)
    click.echo(job.id)
    if wait:
        job.wait(progress=True)
        click.echo(f"{job.id} {job.state}: {summary(job.data)}", err=True)
        if job.state != "succeeded":
            raise SystemExit(1)


def summary(job: dict) -> str:
    counts = job["counts"]
    parts = [f"{counts[k]} {k}" for k in ("succeeded", "failed", "cancelled", "running", "pending") if counts[k]]
    return ", ".join(parts) + (f" — {job['error']}" if job.get("error") else "")


@click.command()
@click.argument("job_id")
@api_options
def status(client: Client, job_id):
    """Show a job's state and counts."""
    job = client.job(job_id).data
    click.echo(f"{job['id']}  {job['model']}  {job['state']}  {job['progress']:.0%}  ({summary(job)})")


@click.command()
@click.argument("job_id")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="directory to write into")
@api_options
def results(client: Client, job_id, out: Path):
    """Write a job's results: texts as results.jsonl, images as <index>.png."""
    out.mkdir(parents=True, exist_ok=True)
    texts, images = 0, 0
    with open(out / "results.jsonl", "w") as jsonl:
        for result in Job(client, job_id).results():
            name = f"{result.index:05d}.png" if result.image is not None else None
            if name:
                (out / name).write_bytes(result.image)
                images += 1
            record = {"index": result.index, "state": result.state, "prompt": result.prompt, "seed": result.seed,
                      "error": result.error, "text": result.text, "file": name}
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            texts += result.text is not None
    click.echo(f"wrote {texts} texts and {images} images to {out}")


@click.command()
@click.argument("job_id")
@api_options
def cancel(client: Client, job_id):
    """Cancel a job (finished items are kept)."""
    job = Job(client, job_id).cancel()
    click.echo(f"{job.id} {job.state}")


@click.command()
@click.option("--state", default=None)
@click.option("--limit", default=20, show_default=True)
@api_options
def jobs(client: Client, state, limit):
    """List recent jobs."""
    for job in (job.data for job in client.jobs(state, limit)):
        click.echo(f"{job['id']}  {job['created_at']}  {job['model']:16} {job['state']:10} {job['progress']:.0%}")


CLIENT_COMMANDS = [submit, status, results, cancel, jobs]
