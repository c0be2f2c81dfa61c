"""Issue 10, "polls under load": GET /v1/jobs/<id> latency at a fixed request rate, idle
and while a large job runs, per backend.

Per backend: a fresh database, web (gunicorn, as `Stack.start_web` starts it) + one
worker. The model is bench/noop_runner.py sleeping `--sleep-ms` per item (time, no CPU),
so a job of `--items` items keeps the worker claiming and committing for a while.

1. idle: one small job, finished; polled at `--rate` requests/s for `--seconds`.
2. running: a job of `--items` items, submitted and seen running; polled at the same
   rate for the same time. It must still be running when the window ends (otherwise
   the figure says so: `still_running` false).
3. finished (unless `--phases` leaves it out): the same large job once it has finished,
   polled again, with no writer at work.

The load is open-loop: request i is due at start + i / rate, whoever sends it (`--threads`
clients, one HTTP connection each, take the next due request), so a slow reply does not
slow the rate down. Latency is measured from the moment a request is sent; `late`
is how long after its due time it was sent (all clients busy: the server fell behind,
or the client is short of CPU), and `p99 from due` counts that wait too.
Before the first phase, one second of the same load warms the web up (its database
connections are opened and its statements prepared on first use); it is not counted.
Also measured per phase: the CPU time the web processes and the worker processes
spent per request, and the client's own.

Usage:
    python bench/polls.py [--backends sqlite,postgres] [--rate 200] [--seconds 10] [--items 5000]
"""
from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from genq.devstack import Stack, wait_for  # noqa: E402

MODEL = "sleepy"
WARM_UP_SECONDS = 1.0
PHASES = ("idle", "running", "finished")


def parse_args() -> argparse.Namespace:
    parser = harness.backend_parser(__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured window")
    parser.add_argument("--items", type=int, default=5000, help="items of the job that runs during the window")
    parser.add_argument("--sleep-ms", type=float, default=None,
                        help="model time per item (default: enough for the job to last twice the window)")
    parser.add_argument("--micro-batch", type=int, default=16, help="items per micro-batch (a commit each)")
    parser.add_argument("--threads", type=int, default=16, help="client threads (connections)")
    parser.add_argument("--phases", default=",".join(PHASES), help="of " + ", ".join(PHASES))
    args = parser.parse_args()
    if args.sleep_ms is None:
        args.sleep_ms = max(0.5, 2000 * args.seconds / args.items)
    return args


def open_loop(stack: Stack, job_id: str, rate: float, seconds: float, threads: int) -> dict:
    """GET /v1/jobs/<job_id> at `rate` per second for `seconds`; latencies and what was kept up."""
    n = max(1, int(rate * seconds))
    host, port = "127.0.0.1", stack.port
    path, headers = f"/v1/jobs/{job_id}", stack.auth()
    results: list[tuple[float, float, float, int] | None] = [None] * n
    lock, counter = threading.Lock(), iter(range(n))
    start = time.perf_counter() + 0.1

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
                if response.will_close:
                    connection.close()
            except (OSError, http.client.HTTPException):
                connection.close()
                status = -1
            results[i] = (due, sent, time.perf_counter(), status)
        connection.close()

    clients = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    cpu_before = harness.cpu_times(stack)
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    cpu_after = harness.cpu_times(stack)
    done = [r for r in results if r is not None]
    ok = [r for r in done if r[3] == 200]
    latencies = [r[2] - r[1] for r in ok]
    late = [max(0.0, r[1] - r[0]) for r in done]
    finished = max(r[2] for r in done)
    return {
        "requests": n,
        "ok": len(ok),
        "errors": n - len(ok),
        "achieved_per_s": len(ok) / (finished - start),
        "p50_ms": 1000 * harness.percentile(latencies, 50),
        "p99_ms": 1000 * harness.percentile(latencies, 99),
        "max_ms": 1000 * max(latencies, default=float("nan")),
        "late_p99_ms": 1000 * harness.percentile(late, 99),
        "p99_from_due_ms": 1000 * harness.percentile([r[2] - r[0] for r in ok], 99),
        **{f"{name}_cpu_ms_per_request": ms for name, ms in harness.cpu_ms_per(cpu_before, cpu_after, n).items()},
    }


def job(stack: Stack, job_id: str) -> dict:
    response = stack.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def run_backend(root: Path, backend: str, args: argparse.Namespace, phases: list[str]) -> dict:
    models_file = harness.write_registry(root / "models.yaml",
                                         {MODEL: harness.noop_entry(args.micro_batch, args.sleep_ms)})
    row: dict = {"backend": backend}
    with harness.database(backend, root, args.postgres_url) as url, harness.running_stack(root, url, models_file, web_processes=args.web_processes) as stack:
        small = stack.submit({"model": MODEL, "prompts": ["p"]})
        assert stack.wait_terminal(small, timeout=120)["state"] == "succeeded"  # also loads the runner
        open_loop(stack, small, args.rate, WARM_UP_SECONDS, args.threads)  # not counted: see the docstring
        if "idle" in phases:
            row["idle"] = open_loop(stack, small, args.rate, args.seconds, args.threads)
        if "running" in phases or "finished" in phases:
            big = stack.submit({"model": MODEL, "prompts": [f"poll benchmark prompt {i}" for i in range(args.items)]})
            wait_for(lambda: job(stack, big)["counts"]["succeeded"] > 0, 120, 0.05, "the large job to start")
        if "running" in phases:
            before = job(stack, big)
            row["running"] = open_loop(stack, big, args.rate, args.seconds, args.threads)
            after = job(stack, big)
            row["running"].update(
                still_running=after["state"] == "running",
                progress_start=before["progress"], progress_end=after["progress"],
                items_per_s=(after["counts"]["succeeded"] - before["counts"]["succeeded"]) / args.seconds)
        if "finished" in phases:
            assert stack.wait_terminal(big, timeout=args.items * args.sleep_ms / 500 + 300)["state"] == "succeeded"
            row["finished"] = open_loop(stack, big, args.rate, args.seconds, args.threads)
    return row


def print_table(rows: list[dict], phases: list[str], seconds: float) -> None:
    print(f"{'backend':<9} {'phase':<9} {'sent/s':>7} {'ok/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'late p99':>8} {'due p99':>8} {'errors':>6} {'web cpu ms/req':>14} {'worker cpu':>10} {'db cpu':>7} {'client cpu':>10}  note")
    for row in rows:
        for phase in phases:
            r = row.get(phase)
            if r is None:
                continue
            note = ""
            if phase == "running":
                note = (f"job {'still running' if r['still_running'] else 'FINISHED before the end'}, "
                        f"progress {r['progress_start']:.2f} -> {r['progress_end']:.2f}, {r['items_per_s']:.0f} items/s")
            print(f"{row['backend']:<9} {phase:<9} {r['requests'] / seconds:7.1f} {r['achieved_per_s']:7.1f} "
                  f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['max_ms']:7.1f} {r['late_p99_ms']:8.1f} {r['p99_from_due_ms']:8.1f} {r['errors']:6d} "
                  f"{r['web_cpu_ms_per_request']:14.2f} {r['worker_cpu_ms_per_request']:10.2f} {r['postgres_cpu_ms_per_request']:7.2f} "
                  f"{r['client_cpu_ms_per_request']:10.2f}  {note}")


def main() -> None:
    args = parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phases {sorted(unknown)} (of {', '.join(PHASES)})")
    with tempfile.TemporaryDirectory(prefix="genq-polls-") as tmp:
        rows = [run_backend(Path(tmp) / backend, backend, args, phases) for backend in args.backends]
    print(f"rate={args.rate:g}/s seconds={args.seconds:g} items={args.items} sleep_ms={args.sleep_ms:g} "
          f"micro_batch={args.micro_batch} threads={args.threads} cpus={psutil.cpu_count()} "
          f"web_processes={args.web_processes or harness.deployed_web_processes()}")
    print_table(rows, phases, args.seconds)
    harness.emit_result("polls", {"rate": args.rate, "seconds": args.seconds, "items": args.items,
                                  "backends": {row["backend"]: row for row in rows}})



if __name__ == "__main__":
    main()
