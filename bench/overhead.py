"""Issue 10, "small jobs as cheap as the broker under them": one-item jobs through the
whole service against no-op tasks through bare Celery on the same kind of worker, in
one run.

1. Raw Celery: a redis-server of its own, `celery worker -P prefork --concurrency 1`
   for bench/raw_celery_app.py, N `noop.delay()` calls from T client threads; tasks/s
   from the first call to the last task's completion (recorded by the task in Redis).
2. genq, per backend: web + one worker on a fresh database, N jobs
   `{"model": "noop", "prompts": ["p"]}` POSTed from T threads (one requests.Session
   each); jobs/s from the first submit to the last job's `finished_at`, and each
   submit's latency. The model is bench/noop_runner.py, so no model time is counted.

Each round runs, per backend, 1 and then 2 (so each backend is compared with a raw
Celery run of the minute before it: this machine's speed moves within minutes, raw
Celery's from 590 to 1,230 tasks/s in one afternoon); the round with the median ratio
is reported per backend.

Usage:
    python bench/overhead.py [--jobs 2000] [--backends sqlite,postgres] [--threads 8] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from genq.devstack import RedisServer, ServiceProcess, wait_for  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = harness.backend_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for all jobs of one backend")
    parser.add_argument("--rounds", type=int, default=3,
                        help="raw Celery then a backend, for each backend, this many times; the round with the median "
                        "ratio is reported")
    return parser.parse_args()


def run_raw_celery(root: Path, redis: RedisServer, n: int, threads: int) -> dict:
    """tasks/s of bare Celery with the same broker, pool and acks as genq's worker. The
    same `redis` serves every round (the client's Celery app keeps its connections)."""
    from bench import raw_celery_app as raw

    root.mkdir(parents=True, exist_ok=True)
    redis.client().flushdb()
    raw.app.conf.broker_url = redis.url
    argv = [sys.executable, "-m", "celery", "-A", "bench.raw_celery_app", "worker", "-P", "prefork", "--concurrency", "1",
            "-Q", raw.QUEUE, "--without-gossip", "--without-mingle", "-l", "warning"]
    env = dict(os.environ, BENCH_REDIS_URL=redis.url, PYTHONPATH=str(ROOT))
    worker = ServiceProcess("raw-celery", argv, env, root, cwd=ROOT)
    client = redis.client()
    try:
        raw.noop.delay(-1)  # warm-up: the worker is ready once this one is done
        wait_for(lambda: client.get(raw.DONE_KEY) == b"1", 60, 0.05, "the raw Celery worker")
        client.delete(raw.DONE_KEY, raw.LAST_KEY)
        first, latencies = _delay_concurrently(raw.noop, n, threads)
        wait_for(lambda: int(client.get(raw.DONE_KEY) or 0) >= n, 600, 0.01, f"{n} raw Celery tasks")
        last = float(client.get(raw.LAST_KEY))
    finally:
        worker.stop()
    return {"tasks_per_s": n / (last - first), "delay_p50_ms": 1000 * harness.percentile(latencies, 50)}


def _delay_concurrently(task, n: int, threads: int) -> tuple[float, list[float]]:
    first, _last, latencies = harness.call_concurrently(list(range(n)), threads,
                                                        lambda state, index: index is not None and task.delay(index))
    return first, latencies


def run_genq(root: Path, backend: str, args: argparse.Namespace) -> dict:
    """jobs/s of N one-item jobs, submitted concurrently, through web + worker + ledger."""
    models_file = harness.write_registry(root / "models.yaml", {"noop": harness.noop_entry()})
    body = {"model": "noop", "prompts": ["p"]}
    with harness.database(backend, root, args.postgres_url) as url, harness.running_stack(root, url, models_file, web_processes=args.web_processes) as stack:
        stack.wait_terminal(stack.submit(body), timeout=120)  # warm-up: loads the runner
        cpu_before = harness.cpu_times(stack)
        first, submitted, latencies = harness.submit_concurrently(stack, [body] * args.jobs, args.threads)
        done = harness.wait_all_terminal(url, args.timeout)
        cpu = harness.cpu_ms_per(cpu_before, harness.cpu_times(stack), args.jobs)
        origin = harness.worker_code_origin(stack)
    assert done["states"] == {"succeeded": args.jobs + 1}, done["states"]
    return {
        "backend": backend,
        "jobs_per_s": args.jobs / (done["last_finished"] - first),
        "submits_per_s": args.jobs / (submitted - first),
        "submit_p50_ms": 1000 * harness.percentile(latencies, 50),
        "submit_p99_ms": 1000 * harness.percentile(latencies, 99),
        "code": origin,
        "cpu_ms_per_job": cpu,
    }


def print_table(pairs: list[tuple[dict, dict]]) -> None:
    """One line per backend: its figures beside those of the raw Celery run before it."""
    print(f"{'backend':<10} {'jobs/s':>8} {'raw celery tasks/s':>19} {'ratio':>6} {'submit p50 ms':>14} "
          f"{'submit p99 ms':>14} {'submitted/s':>12}")
    for raw, row in pairs:
        print(f"{row['backend']:<10} {row['jobs_per_s']:8.1f} {raw['tasks_per_s']:19.1f} "
              f"{row['jobs_per_s'] / raw['tasks_per_s']:6.3f} {row['submit_p50_ms']:14.1f} "
              f"{row['submit_p99_ms']:14.1f} {row['submits_per_s']:12.1f}")
    for _raw, row in pairs:
        spent = ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms_per_job"].items())
        print(f"{row['backend']:<10} CPU ms per job: {spent} (the client's includes waiting for the jobs)")


def main() -> None:
    args = parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="genq-overhead-") as tmp:
        raw_redis = RedisServer(Path(tmp) / "raw-redis").start()
        try:
            for number in range(1, args.rounds + 1):
                pairs = [(run_raw_celery(Path(tmp) / f"raw-{number}-{backend}", raw_redis, args.jobs, args.threads),
                          run_genq(Path(tmp) / f"{backend}-{number}", backend, args)) for backend in args.backends]
                print(f"round {number}: jobs={args.jobs} threads={args.threads} web_processes="
                      f"{args.web_processes or harness.deployed_web_processes()} code={pairs[0][1]['code'] if pairs else '-'}")
                print_table(pairs)
                rounds.append(pairs)
        finally:
            raw_redis.stop()
    medians = {backend: median_round(rounds, index) for index, backend in enumerate(args.backends)}
    print("median ratio per backend: " + ", ".join(f"{backend} {row['ratio']:.3f} (of {row['ratios']})"
                                                      for backend, row in medians.items()))
    harness.emit_result("overhead", {"rounds": args.rounds, "backends": medians})


def median_round(rounds: list[list[tuple[dict, dict]]], index: int) -> dict:
    """A backend's figures from the round whose ratio to raw Celery is the median (this
    machine's speed swings by a third from minute to minute: one round can mislead)."""
    rows = sorted(({**row, "raw_tasks_per_s": raw["tasks_per_s"], "ratio": row["jobs_per_s"] / raw["tasks_per_s"]}
                   for raw, row in (pairs[index] for pairs in rounds)), key=lambda row: row["ratio"])
    chosen = rows[(len(rows) - 1) // 2]
    return {**chosen, "ratios": [round(row["ratio"], 3) for row in rows]}


if __name__ == "__main__":
    main()
