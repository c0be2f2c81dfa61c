"""Issue 11, "streams beside polls": GET /v1/jobs/<id> latency at a fixed rate while a job
runs, without and then with `--streams` open event streams (GET /v1/jobs/<id>/events)
on that job, per backend.

Per backend: a fresh database, web (gunicorn's gthread worker, as `Stack.start_web`
starts it: one process) + one worker running bench/noop_runner.py, which sleeps
`--sleep-ms` per item (time, no CPU), so the job commits a micro-batch every
`--micro-batch` x `--sleep-ms` ms and each commit sends a notice to every stream.

1. without: polls at `--rate`/s for `--seconds` (bench/polls.py's open loop) while the job runs.
2. with: `--streams` SSE clients open on the job (each reads from the job's first item,
   as a client that starts watching does); once all have caught up with what finished
   before they opened, the same polls again. Every stream must have seen each item
   event once by the end (checked after the job finishes).

Usage:
    python bench/streams.py [--backends sqlite,postgres] [--streams 100] [--rate 100] [--seconds 10]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.polls import job, open_loop  # noqa: E402
from genq.devstack import Stack, wait_for  # noqa: E402

MODEL = "sleepy"


def parse_args() -> argparse.Namespace:
    parser = harness.backend_parser(__doc__)
    parser.add_argument("--streams", type=int, default=100, help="event streams open in the second window")
    parser.add_argument("--rate", type=float, default=100.0, help="status polls per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured window")
    parser.add_argument("--items", type=int, default=4000, help="items of the job that runs during both windows")
    parser.add_argument("--sleep-ms", type=float, default=None,
                        help="model time per item (default: the job lasts five windows)")
    parser.add_argument("--micro-batch", type=int, default=32, help="items per micro-batch (a commit and a notice each)")
    parser.add_argument("--threads", type=int, default=16, help="polling client threads (connections)")
    args = parser.parse_args()
    if args.sleep_ms is None:
        args.sleep_ms = max(0.5, 5000 * args.seconds / args.items)
    return args


class StreamClient(threading.Thread):
    """One SSE client: counts item events (by index) until the job's final event."""

    def __init__(self, stack: Stack, job_id: str):
        super().__init__(daemon=True)
        self.url, self.headers = f"{stack.base_url}/v1/jobs/{job_id}/events", stack.auth()
        self.items: list[int] = []
        self.finished = False
        self.error: str | None = None

    def run(self) -> None:
        try:
            with requests.get(self.url, headers=self.headers, stream=True, timeout=300) as response:
                response.raise_for_status()
                event = None
                for line in response.iter_lines(chunk_size=None, decode_unicode=True):
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "item":
                        self.items.append(int(line.split('"index":', 1)[1].split(",", 1)[0]))
                    elif line.startswith("data: ") and event in ("completed", "failed", "cancelled"):
                        self.finished = True
                        return
        except Exception as exc:  # reported in the row
            self.error = f"{type(exc).__name__}: {exc}"


def run_backend(root: Path, backend: str, args: argparse.Namespace) -> dict:
    models_file = harness.write_registry(root / "models.yaml",
                                         {MODEL: harness.noop_entry(args.micro_batch, args.sleep_ms)})
    row: dict = {"backend": backend}
    settings = {"events_max_streams": max(128, args.streams + 8)}
    with harness.database(backend, root, args.postgres_url) as url, \
            harness.running_stack(root, url, models_file, **settings) as stack:
        small = stack.submit({"model": MODEL, "prompts": ["p"]})
        assert stack.wait_terminal(small, timeout=120)["state"] == "succeeded"  # also loads the runner
        big = stack.submit({"model": MODEL, "prompts": [f"stream benchmark prompt {i}" for i in range(args.items)]})
        wait_for(lambda: job(stack, big)["counts"]["succeeded"] > 0, 120, 0.05, "the job to start")
        row["without"] = open_loop(stack, big, args.rate, args.seconds, args.threads)
        finished_at_open = job(stack, big)["counts"]["succeeded"]
        clients = [StreamClient(stack, big) for _ in range(args.streams)]
        opened = time.perf_counter()
        for client in clients:
            client.start()
        wait_for(lambda: all(len(c.items) >= finished_at_open or c.error for c in clients), 300, 0.1,
                 "every stream to catch up")
        row["catch_up_s"] = time.perf_counter() - opened
        row["with"] = open_loop(stack, big, args.rate, args.seconds, args.threads)
        row["still_running"] = job(stack, big)["state"] == "running"
        assert stack.wait_terminal(big, timeout=args.items * args.sleep_ms / 500 + 300)["state"] == "succeeded"
        for client in clients:
            client.join(60)
        row["streams"] = args.streams
        row["streams_complete"] = sum(c.finished and sorted(c.items) == list(range(args.items)) for c in clients)
        row["stream_errors"] = [c.error for c in clients if c.error][:3]
        row["duplicates"] = sum(len(c.items) - len(set(c.items)) for c in clients)
        row["missing"] = sum(args.items - len(set(c.items)) for c in clients)
    return row


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"{'backend':<9} {'window':<22} {'ok/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>6} "
          f"{'web cpu ms/req':>14}  note")
    for row in rows:
        for window in ("without", "with"):
            r = row[window]
            label = "no streams" if window == "without" else f"{row['streams']} streams open"
            note = ""
            if window == "with":
                note = (f"{row['streams_complete']}/{row['streams']} streams saw every item once (duplicates "
                        f"{row['duplicates']}, missing {row['missing']}); caught up in "
                        f"{row['catch_up_s']:.1f} s; job {'still running' if row['still_running'] else 'FINISHED early'}")
            print(f"{row['backend']:<9} {label:<22} {r['achieved_per_s']:7.1f} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} "
                  f"{r['max_ms']:7.1f} {r['errors']:6d} {r['web_cpu_ms_per_request']:14.2f}  {note}")
    for row in rows:
        without, with_ = row["without"], row["with"]
        print(f"{row['backend']}: with {row['streams']} streams / without, p50 {ratio(with_, without, 'p50_ms')}, "
              f"p99 {ratio(with_, without, 'p99_ms')}, web cpu per request "
              f"{ratio(with_, without, 'web_cpu_ms_per_request')}")


def ratio(with_: dict, without: dict, figure: str) -> str:
    return f"{with_[figure]:.1f} / {without[figure]:.1f} = {with_[figure] / without[figure]:.2f}x" \
        if without[figure] else "n/a"


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="genq-streams-") as tmp:
        rows = [run_backend(Path(tmp) / backend, backend, args) for backend in args.backends]
    print(f"streams={args.streams} rate={args.rate:g}/s seconds={args.seconds:g} items={args.items} "
          f"sleep_ms={args.sleep_ms:g} micro_batch={args.micro_batch} cpus={psutil.cpu_count()}")
    print_table(rows, args)
    harness.emit_result("streams", {"rate": args.rate, "seconds": args.seconds, "streams": args.streams,
                                    "backends": {row["backend"]: row for row in rows}})


if __name__ == "__main__":
    main()
