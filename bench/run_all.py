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
    parser.add_argument("--backends", default="sqlite,postgres", help="for overhead.py, polls.py, streams.py, flat.py and eta.py; "
                        "openai_batch.py runs on the first")
    parser.add_argument("--skip", default="", help="comma-separated names: " + ", ".join(n for n, _ in runs(None)))
    return parser.parse_args()


def runs(args) -> list[tuple[str, list[str]]]:
    """(name, argv after the script) of each benchmark, in the order they run."""
    jobs, backends = (args.jobs, args.backends) if args else (0, "")
    return [
        ("throughput", ["throughput.py"]),
        ("device-bound", ["device_bound.py", "--backends", backends or "sqlite,postgres"]),
        ("sampling", ["sampling.py"]),
        ("overhead", ["overhead.py", "--jobs", str(jobs), "--backends", backends]),
        ("crossjob-noop", ["crossjob.py", "--model", "noop"]),
        ("crossjob-tiny", ["crossjob.py", "--model", "tiny-text"]),
        ("polls", ["polls.py", "--backends", backends or "sqlite,postgres"]),
        ("streams", ["streams.py", "--backends", backends or "sqlite,postgres"]),
        ("memory", ["memory.py"]),
        ("flat", ["flat.py", "--backends", backends or "sqlite,postgres"]),
        ("eta", ["eta.py", "--backends", backends or "sqlite,postgres"]),
        ("openai-batch", ["openai_batch.py", "--backend", (backends or "sqlite").split(",")[0]]),
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
    if name == "device-bound":
        return [("service ~ bare model", f"{backend}: service / model alone, a model that takes time but no CPU",
                 f"{row['ratio']:.3f} ({row['service_items_per_s']:.1f} / {row['in_process_items_per_s']:.1f})")
                for backend, row in result["backends"].items()]
    if name == "throughput":
        return [("service ~ bare model", "service as deployed / in-process items/s",
                 f"{result['ratio']:.2f} ({result['service_items_per_s']:.1f} / {result['in_process_items_per_s']:.1f})"),
                ("service ~ bare model", "service as deployed / in-process, each round's own ratio",
                 f"{result['ratio_by_round']:.2f} (median of "
                 f"[{', '.join(f'{ratio:.2f}' for ratio in result['round_ratios'])}])"),
                ("service ~ bare model", "service, the job one slice / in-process items/s",
                 f"{result['ratio_one_slice']:.2f} ({result['one_slice_items_per_s']:.1f} / "
                 f"{result['in_process_items_per_s']:.1f})"),
                ("service ~ bare model", "service / one-task-per-prompt Celery items/s",
                 f"{result['ratio_vs_tutorial']:.2f} ({result['service_items_per_s']:.1f} / "
                 f"{result['tutorial_items_per_s']:.1f})")]
    if name == "sampling":
        return [("seeded sampling ~ plain", "seeded / plain generate items/s, top_p 0.95",
                 f"{result['ratio']:.2f} ({result['seeded_items_per_s']:.1f} / {result['plain_items_per_s']:.1f})"),
                ("seeded sampling ~ plain", "seeded / plain generate items/s, top_p 1.0",
                 f"{result['ratio_top_p_1']:.2f} ({result['seeded_top_p_1_items_per_s']:.1f} / "
                 f"{result['plain_top_p_1_items_per_s']:.1f})"),
                ("seeded sampling ~ plain", "greedy / one prompt at a time items/s",
                 f"{result['greedy_items_per_s']:.1f} / {result['one_at_a_time_items_per_s']:.1f}")]
    if name == "overhead":
        rows = []
        for backend, row in result["backends"].items():
            rows += [("small jobs ~ broker", f"{backend}: one-item jobs/s / raw Celery no-op tasks/s (median of "
                      f"{result['rounds']} rounds' ratios {row['ratios']})",
                      f"{row['ratio']:.3f} ({row['jobs_per_s']:.1f} / {row['raw_tasks_per_s']:.1f})"),
                     ("cheap submits", f"{backend}: submit p50 / p99 ms",
                      f"{row['submit_p50_ms']:.1f} / {row['submit_p99_ms']:.1f}")]
        return rows
    if name == "polls":
        rows = []
        for backend, row in result["backends"].items():
            for phase in ("idle", "running", "finished"):
                if phase in row:
                    r = row[phase]
                    note = "" if phase != "running" or r["still_running"] else " (job finished early)"
                    rows.append(("polls under load", f"{backend} {phase}: status p50 / p99 ms at {result['rate']:g}/s "
                                 "(achieved /s)", f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ({r['achieved_per_s']:.0f}){note}"))
        return rows
    if name == "streams":
        return [("streams beside polls", f"{backend}: status p99 ms at {result['rate']:g}/s, no streams -> "
                 f"{result['streams']} streams", f"{row['without']['p99_ms']:.1f} -> {row['with']['p99_ms']:.1f} "
                 f"({row['with']['p99_ms'] / row['without']['p99_ms']:.2f}x; {row['streams_complete']}/"
                 f"{row['streams']} streams saw every item once)")
                for backend, row in result["backends"].items()]
    if name == "memory":
        return [("memory", f"worker pool RSS, job {result['warmup']} -> {result['jobs']} (growth)",
                 f"{result['rss_first_mib']:.1f} -> {result['rss_last_mib']:.1f} MiB ({100 * result['growth']:+.2f} %)")]
    if name == "flat":
        return flat_figures(result)
    if name == "eta":
        return [("ETA within 20 %", f"{backend}: median error of the predicted finish ({row['predicted']} jobs)",
                  "n/a" if row["median_error"] is None else f"{100 * row['median_error']:.1f} %")
                for backend, row in result["backends"].items()]
    if name == "openai-batch":
        return [("OpenAI batch ~ native job", f"{result['backend']}: {result['lines']} lines, batch / native items/s",
                 f"{result['ratio']:.3f} ({result['lines'] / result['sdk_s']:.1f} / "
                 f"{result['lines'] / result['native_s']:.1f})")]
    return [("cross-job batching", f"{result['model']}: {result['items']} one-item jobs / one job, items/s",
             f"{result['ratio']:.3f} ({result['one_item_jobs_items_per_s']:.1f} / {result['one_job_items_per_s']:.1f})")]


FLAT_FIGURES = {"open": (("submit", "p99"), ("claim", "p50"), ("claim", "p99")),
                "history": (("submit", "p99"), ("claim", "p50"), ("claim", "p99"), ("poll", "p99"), ("list", "p99")),
                "job": (("claim", "p50"), ("claim", "p99"), ("poll", "p99"))}


def flat_figures(result: dict) -> list[tuple[str, str, str]]:
    """The goal's figures of flat.py: small -> big and their ratio (goal <= 1.2)."""
    rows = []
    for backend, phases in result["backends"].items():
        for phase, figures in FLAT_FIGURES.items():
            for figure, stat in figures:
                row = phases.get(phase, {}).get(figure)
                if row is not None:
                    rows.append(("flat in open work/history", f"{backend} {phase}: {figure} {stat} ms, small -> big",
                                 f"{row[f'small_{stat}_ms']:.1f} -> {row[f'big_{stat}_ms']:.1f} "
                                 f"({row[f'{stat}_ratio']:.2f}x)"))
        rows.append(("flat in open work/history", f"{backend}: hot-path statements reading a whole table",
                     str(phases.get("full_scans"))))
    return rows


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
