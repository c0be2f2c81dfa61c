"""Issue 11, "status that tells the future": how far the ETA of GET /v1/jobs/<id> is from
when jobs really finish.

Per backend: a fresh database, web (gunicorn) + one worker; the model is
bench/noop_runner.py sleeping `--sleep-ms` per item (time, no CPU), so its throughput is
steady and the error is the estimate's own.

1. Warm-up: a job large enough to keep the worker busy runs for `--warmup` seconds (the
   goal's "once the model has run for a minute"), so the throughput is measured.
2. While it still runs, `--jobs` jobs of `--items` items each are submitted behind it,
   from `--tenants` tenants in turn (so the tenants' turns decide the order, not just
   age), `--gap` seconds apart. Then each one's status is read: predicted finish = time
   of the read + `eta_seconds`.
3. Once every job has finished: each job's error is |predicted - real finish| over the
   time from the prediction to the real finish (`finished_at` in the ledger). The median
   is the goal's figure (goal: <= 0.20).

Usage:
    python bench/eta.py [--backends sqlite,postgres] [--warmup 60] [--jobs 12] [--items 120]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from genq.devstack import Stack, wait_for  # noqa: E402

MODEL = "sleepy"
GOAL = 0.20


def parse_args() -> argparse.Namespace:
    parser = harness.backend_parser(__doc__)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds the model runs before the first prediction")
    parser.add_argument("--jobs", type=int, default=12, help="jobs submitted behind the warm-up job")
    parser.add_argument("--items", type=int, default=120, help="items per job")
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between the submits")
    parser.add_argument("--sleep-ms", type=float, default=20.0, help="model time per item")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--slice", type=int, default=32, help="GENQ_SLICE_MAX_ITEMS")
    return parser.parse_args()


def status(stack: Stack, job_id: str, key: str) -> dict:
    response = requests.get(f"{stack.base_url}/v1/jobs/{job_id}", headers=stack.auth(key), timeout=30)
    response.raise_for_status()
    return response.json()


def warm_up(stack: Stack, args: argparse.Namespace) -> str:
    """A job that keeps the worker busy through the warm-up and the submits after it."""
    behind = args.jobs * args.items * args.sleep_ms / 1000
    items = int((args.warmup + behind + 30) / (args.sleep_ms / 1000))
    job_id = stack.submit({"model": MODEL, "prompts": ["w"] * items})
    wait_for(lambda: status(stack, job_id, stack.api_key)["state"] == "running", 60, what="the warm-up job to run")
    time.sleep(args.warmup)
    body = status(stack, job_id, stack.api_key)
    assert body["state"] == "running", "the warm-up job ended before the submits"
    print(f"  warm-up: {items} items; after {args.warmup:.0f} s: {body['counts']['succeeded']} done, "
          f"ETA {body['eta_seconds']} s", flush=True)
    return job_id


def predict(stack: Stack, args: argparse.Namespace, keys: list[str]) -> list[dict]:
    """Submit every job, then read each one's status: the queue the estimates see is the
    one that runs (a job submitted later may rightly go ahead of an earlier one: a tenant
    that was never served comes first, which no estimate made before it came can know)."""
    submitted = []
    for i in range(args.jobs):
        key = keys[i % len(keys)]
        submitted.append((stack.submit({"model": MODEL, "prompts": [f"p{n}" for n in range(args.items)]}, key=key), key))
        time.sleep(args.gap)
    predictions = []
    for job_id, key in submitted:
        read_at = time.time()
        body = status(stack, job_id, key)
        predictions.append({"job": job_id, "key": key, "read_at": read_at, "eta_seconds": body["eta_seconds"],
                            "eta_reason": body["eta_reason"], "queue": body["queue"]})
    return predictions


def measure(backend: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"genq-eta-{backend}-") as tmp:
        root = Path(tmp)
        models_file = harness.write_registry(root / "models.yaml", {
            MODEL: harness.noop_entry(micro_batch=args.micro_batch, sleep_ms_per_item=args.sleep_ms)})
        with harness.database(backend, root, args.postgres_url) as url, \
                harness.running_stack(root, url, models_file, slice_max_items=args.slice) as stack:
            keys = [stack.new_key(f"tenant{i}") for i in range(args.tenants)]
            warm = warm_up(stack, args)
            predictions = predict(stack, args, keys)
            harness.wait_all_terminal(url, timeout=args.warmup * 10 + 600)
            rows = []
            for p in predictions:
                body = status(stack, p["job"], p["key"])
                finished = datetime.fromisoformat(body["finished_at"]).timestamp()
                real = finished - p["read_at"]
                error = None if p["eta_seconds"] is None else abs(p["eta_seconds"] - real) / real
                rows.append({**p, "real_seconds": real, "error": error, "state": body["state"]})
            assert status(stack, warm, stack.api_key)["state"] == "succeeded"
    for row in rows:
        queue = row["queue"] or {}
        error = "-" if row["error"] is None else f"{100 * row['error']:.1f} %"
        print(f"  {row['job'][:8]} position {queue.get('position')} ({queue.get('items_ahead')} items ahead): "
              f"predicted {row['eta_seconds']} s ({row['eta_reason'] or 'estimate'}), real {row['real_seconds']:.1f} s,"
              f" error {error}", flush=True)
    errors = [row["error"] for row in rows if row["error"] is not None]
    return {"median_error": statistics.median(errors) if errors else None, "max_error": max(errors, default=None),
            "predicted": len(errors), "jobs": len(rows)}


def main() -> int:
    args = parse_args()
    results = {}
    for backend in args.backends:
        print(f"--- {backend}", flush=True)
        results[backend] = row = measure(backend, args)
        median = row["median_error"]
        print(f"  median error of the predicted finish: "
              f"{'n/a' if median is None else f'{100 * median:.1f} %'} over {row['predicted']} of {row['jobs']} jobs "
              f"(goal <= {100 * GOAL:.0f} %)", flush=True)
    harness.emit_result("eta", {"backends": results, "goal": GOAL, "warmup_s": args.warmup})
    return 0


if __name__ == "__main__":
    sys.exit(main())
