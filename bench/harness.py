"""What the service benchmarks share: a registry with the no-op model, a fresh database
per backend, a running stack, concurrent submits over HTTP, a cheap wait for "all jobs
terminal", and the one machine-readable line (`RESULT {json}`) that run_all.py reads.

Waiting reads the ledger directly (one COUNT query every `interval`) rather than polling
jobs over HTTP: the web process and the worker share two cores with this client, and a
wait that competed with them would be measured as service overhead.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import secrets
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genq.devstack import RedisServer, Stack  # noqa: E402

DEFAULT_POSTGRES_URL = os.environ.get("GENQ_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NOOP_RUNNER = "bench.noop_runner:NoopRunner"


def backend_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments of a benchmark run per backend: `--backends` (a list once parsed)
    and `--postgres-url`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres",
                        type=lambda text: [b.strip() for b in text.split(",") if b.strip()])
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="a server to create a fresh database on")
    parser.add_argument("--web-processes", type=int, default=None,
                        help="gunicorn processes of the web (default: as deployed, GENQ_WEB_PROCESSES' default)")
    return parser


def deployed_web_processes() -> int:
    """The web's process count when nobody sets GENQ_WEB_PROCESSES: what `genq up` runs."""
    from shared.settings import Settings

    return Settings.model_fields["web_processes"].default


def write_registry(path: Path, models: dict[str, dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def noop_entry(micro_batch: int = 64, sleep_ms_per_item: float = 0.0) -> dict:
    """`source` must be a path or a hub id; "." (the registry's directory) is never read.
    With `sleep_ms_per_item` the runner sleeps that long per item (a slow model, no CPU)."""
    entry = {"task": "text-generation", "source": ".", "runner": NOOP_RUNNER, "micro_batch_size": micro_batch}
    if sleep_ms_per_item:
        entry["options"] = {"sleep_ms_per_item": sleep_ms_per_item}
    return entry


@contextmanager
def fresh_postgres(server_url: str) -> Iterator[str]:
    """A new database on the server of `server_url`, dropped afterwards (whatever is
    still connected to it), so a run starts empty and leaves nothing behind."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"genq_bench_{secrets.token_hex(4)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        from shared.db import dispose_engines

        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database(backend: str, root: Path, postgres_url: str = DEFAULT_POSTGRES_URL) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{root / 'bench.db'}"
    elif backend in ("postgres", "postgresql"):
        with fresh_postgres(postgres_url) as url:
            yield url
    else:
        raise SystemExit(f"unknown backend {backend!r} (sqlite or postgres)")


@contextmanager
def running_stack(root: Path, database_url: str, models_file: Path, *, worker: bool = True,
                  web_processes: int | None = None, **settings) -> Iterator[Stack]:
    """Redis, web (`web_processes` gunicorn processes, by default as deployed) and (unless
    `worker` is False: jobs then stay queued) one worker; PYTHONPATH is this checkout, so
    the subprocesses run the code next to this file (and can import bench.noop_runner)."""
    redis = RedisServer(root / "redis").start()
    settings.setdefault("rate_limit", "10000000/minute")  # the limiter must not shape the load
    stack = Stack(root / "stack", database_url, redis.url, models_file, env={"PYTHONPATH": str(ROOT)}, **settings)
    stack.redis_pid = redis.process.pid
    try:
        stack.migrate()
        stack.start_web(web_processes or deployed_web_processes())
        if worker:
            stack.start_worker()
        yield stack
    finally:
        stack.stop()
        redis.stop()


ALL = slice(0, 4)  # psutil's cpu_times(): user, system, and those of children that ended and were waited for


def cpu_times(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) so far of the web process tree, the worker's, the
    stack's Redis, every `postgres` process on this machine (0 on SQLite, where the
    database works inside web and worker) and this process (the client). Each process
    counts its children that ended too (`ALL`): PostgreSQL serves each connection from a
    process of its own, and a server that opened and closed connections under load had
    most of its CPU in processes already gone."""
    import psutil

    def tree(pid: int | None) -> float:
        try:
            root = psutil.Process(pid)
            return sum(sum(p.cpu_times()[ALL]) for p in [root, *root.children(recursive=True)])
        except (psutil.NoSuchProcess, ValueError):
            return 0.0

    def postgres() -> float:
        total = 0.0
        for process in psutil.process_iter(["name"]):
            if process.info["name"] in ("postgres", "postmaster"):
                try:
                    total += sum(process.cpu_times()[ALL])
                except psutil.NoSuchProcess:
                    pass
        return total

    own = psutil.Process().cpu_times()
    worker = stack.processes.get("worker")
    return {"web": tree(stack.processes["web"].pid), "worker": tree(worker.pid if worker else None),
            "redis": tree(getattr(stack, "redis_pid", None)), "postgres": postgres(),
            "client": own.user + own.system}


def cpu_ms_per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work by component, between two `cpu_times`."""
    return {name: 1000 * (after[name] - before[name]) / n for name in after}


def worker_code_origin(stack: Stack) -> str:
    """Where the worker imported `worker` from, as the no-op runner printed it."""
    marker = "noop runner: worker code from "
    for line in stack.processes["worker"].log().splitlines():
        if marker in line:
            return str(Path(line.split(marker, 1)[1].strip()).parent.parent)
    return "unknown"


def call_concurrently(args: list, threads: int, call) -> tuple[float, float, list[float]]:
    """`call(state, arg)` for every arg from `threads` clients, each with its own `state`
    (`call(None, None)` makes it). Returns the wall-clock time of the first call, of the
    last reply, and each call's latency."""
    lock, queue, latencies = threading.Lock(), list(reversed(args)), []

    def client() -> None:
        state = call(None, None)
        while True:
            with lock:
                if not queue:
                    return
                arg = queue.pop()
            started = time.perf_counter()
            call(state, arg)
            with lock:
                latencies.append(time.perf_counter() - started)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    first = time.time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return first, time.time(), latencies


def submit_concurrently(stack: Stack, bodies: list[dict], threads: int) -> tuple[float, float, list[float]]:
    """POST every body from `threads` clients, each on one kept-alive connection
    (`http.client`, as polls.py does): the load generator shares this machine's cores
    with the service, and through `requests` it spent 1.0-1.4 ms of CPU per submit, where
    this spends 0.25-0.3 (overhead.py prints it)."""
    headers, errors = {**stack.auth(), "Content-Type": "application/json"}, []

    def post(connection, body):
        if connection is None:
            return http.client.HTTPConnection("127.0.0.1", stack.port, timeout=120)
        connection.request("POST", "/v1/jobs", body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        text = response.read()
        if response.status != 202:
            errors.append(f"{response.status} {text[:200]!r}")
        if response.will_close:
            connection.close()

    first, last, latencies = call_concurrently(bodies, threads, post)
    if errors:
        raise RuntimeError(f"{len(errors)} submits failed, first: {errors[0]}")
    return first, last, latencies


def wait_all_terminal(database_url: str, timeout: float, interval: float = 0.1) -> dict:
    """Block until no job is unfinished; return the states' counts and the latest
    `finished_at` (wall clock, seconds) the ledger recorded."""
    from sqlalchemy import func, select

    from shared.db import session_scope
    from shared.orm import Job
    from shared.states import TERMINAL_JOB_STATES

    deadline = time.monotonic() + timeout
    while True:
        with session_scope(database_url) as session:
            open_jobs = session.scalar(select(func.count(Job.id)).where(Job.state.not_in(list(TERMINAL_JOB_STATES))))
            if not open_jobs:
                states = dict(session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all())
                last = session.scalar(select(func.max(Job.finished_at)))
                return {"states": {getattr(k, "value", k): v for k, v in states.items()}, "last_finished": epoch(last)}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{open_jobs} jobs still unfinished after {timeout}s")
        time.sleep(interval)


def epoch(moment: datetime | None) -> float:
    if moment is None:
        return time.time()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = math.ceil(p / 100 * len(ordered)) - 1
    return ordered[max(0, min(len(ordered) - 1, rank))]


def emit_result(bench: str, figures: dict) -> None:
    """The last line a benchmark prints, for run_all.py."""
    print("RESULT " + json.dumps({"bench": bench, **figures}, sort_keys=True), flush=True)
