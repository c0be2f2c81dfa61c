"""`make bench`: every benchmark in turn, each as a subprocess of its own (a fresh stack,
no state shared), then one table of the figures that matter, read from the last
`RESULT {json}` line each prints.

    python bench/run_all.py [--jobs 2000] [--backends sqlite,postgres] [--skip crossjob-tiny]

Each benchmark's own output is shown as it runs; the summary comes last.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="one-item jobs per backend in overhead.py")
    parser.add_argument("--backends", default="sqlite,postgres", help="for overhead.py")
    parser.add_argument("--skip", default="", help="comma-separated names: " + ", ".join(n for n, _ in runs(None)))
    return parser.parse_args()


def runs(args) -> list[tuple[str, list[str]]]:
    """(name, argv after the script) of each benchmark, in the order they run."""
    jobs, backends = (args.jobs, args.backends) if args else (0, "")
    return [
        ("throughput", ["throughput.py"]),
        ("overhead", ["overhead.py", "--jobs", str(jobs), "--backends", backends]),
        ("crossjob-noop", ["crossjob.py", "--model", "noop"]),
        ("crossjob-tiny", ["crossjob.py", "--model", "tiny-text"]),
    ]


def run_one(name: str, argv: list[str]) -> dict | None:
    """Run one benchmark, echoing its output; its RESULT, or None if it failed."""
    print(f"\n=== {name}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(BENCH / argv[0]), *argv[1:]], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    result = None
    for line in process.stdout:
        print(line, end="", flush=True)
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    process.wait()
    print(f"=== {name}: exit {process.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    return result if process.returncode == 0 else None


def figures(name: str, result: dict) -> list[tuple[str, str, str]]:
    """(goal, figure, value) rows of one benchmark's result."""
    if name == "throughput":
        return [("service ~ bare model", "service / in-process items/s",
                 f"{result['ratio']:.2f} ({result['service_items_per_s']:.1f} / {result['in_process_items_per_s']:.1f})")]
    if name == "overhead":
        raw = result["raw_tasks_per_s"]
        rows = [("small jobs ~ broker", "raw Celery no-op tasks/s", f"{raw:.1f}")]
        for backend, row in result["backends"].items():
            rows += [("small jobs ~ broker", f"{backend}: one-item jobs/s (ratio to raw)",
                      f"{row['jobs_per_s']:.1f} ({row['jobs_per_s'] / raw:.3f})"),
                     ("cheap submits", f"{backend}: submit p50 / p99 ms",
                      f"{row['submit_p50_ms']:.1f} / {row['submit_p99_ms']:.1f}")]
        return rows
    return [("cross-job batching", f"{result['model']}: {result['items']} one-item jobs / one job, items/s",
             f"{result['ratio']:.3f} ({result['one_item_jobs_items_per_s']:.1f} / {result['one_job_items_per_s']:.1f})")]


def print_summary(rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main() -> int:
    args = parse_args()
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    rows, failed = [("goal", "figure", "value")], []
    for name, argv in runs(args):
        if name in skip:
            continue
        result = run_one(name, argv)
        if result is None:
            failed.append(name)
            rows.append(("-", f"{name}", "FAILED"))
        else:
            rows += figures(name, result)
    print_summary(rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
