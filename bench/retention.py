"""Issue 16, retention: removing 100,000 expired jobs must not slow the hot path.

Per backend, on a fresh database with web (gunicorn) and Redis running but no worker:
the ledger is grown to `--jobs` finished jobs (2 items each, finished 31 to 61 days
ago: all past the default GENQ_RESULT_TTL of 30 days) beside 100 fresh finished jobs
that the status polls read. Then, side by side:

- before: submit (POST /v1/jobs, one item, cancelled untimed) and status poll (GET
  /v1/jobs/<id>) p50/p99, alternating, with nothing else running;
- during: the same, alternating, for as long as the reconciler's sweep
  (`shared.retention.sweep`, in a thread of this process, as the reconciler runs it)
  removes the expired jobs in its batches.

Printed: each figure before and during, their ratio, the sweep's jobs/s, and whether
every expired job went and every fresh one stayed.

Usage:
    python bench/retention.py [--backends sqlite,postgres] [--jobs 100000] [--samples 200]
"""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import flat, flat_data, harness  # noqa: E402

GOALS_MS = {"submit": 50.0, "poll": 20.0}  # issue 10's p99 goals, which the sweep must not break


def parse_args():
    parser = harness.backend_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=100_000, help="expired finished jobs to remove")
    parser.add_argument("--samples", type=int, default=200, help="timed requests of each kind before the sweep")
    parser.add_argument("--tenants", type=int, default=50)
    return parser.parse_args()


class Timings:
    def __init__(self):
        self.submit: list[float] = []
        self.poll: list[float] = []

    def figures(self) -> dict:
        return {name: {"n": len(values), "p50_ms": 1000 * harness.percentile(values, 50),
                       "p99_ms": 1000 * harness.percentile(values, 99)}
                for name, values in (("submit", self.submit), ("poll", self.poll))}


def alternate(probe: flat.Probe, timings: Timings, keep_going) -> None:
    """Submit (its job cancelled untimed), then poll a fresh job, while `keep_going(n)`."""
    headers, url = probe.stack.auth(probe.keys[flat.SUBMITTER]), probe.stack.base_url + "/v1/jobs"
    n = 0
    while keep_going(n):
        started = time.perf_counter()
        response = probe.http.post(url, json={"model": flat.MODEL, "prompts": ["p"]}, headers=headers, timeout=60)
        timings.submit.append(time.perf_counter() - started)
        assert response.status_code == 202, response.text[:300]
        probe.http.post(f"{url}/{response.json()['id']}/cancel", headers=headers, timeout=60)
        started = time.perf_counter()
        probe._get(f"/v1/jobs/{probe.probe_jobs[n % len(probe.probe_jobs)]}", flat.LISTER)
        timings.poll.append(time.perf_counter() - started)
        n += 1


def count_jobs(url: str) -> int:
    from shared.db import session_scope
    from shared.orm import Job

    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def run_backend(root: Path, backend: str, args) -> dict:
    from shared.orm import utcnow
    from shared.retention import sweep
    from shared.settings import Settings
    from shared.storage import LocalStorage

    print(f"\n[{backend}] {args.jobs} expired finished jobs to remove", flush=True)
    with flat.service(root, backend, args) as (url, tenants, params, probe):
        started = time.monotonic()
        flat_data.add_history(url, flat.MODEL, params, tenants, args.jobs, 2, utcnow() - timedelta(days=31))
        print(f"  ledger grown in {time.monotonic() - started:.0f} s", flush=True)
        before = Timings()
        alternate(probe, before, lambda n: n < args.samples)
        settings = Settings(database_url=url, data_dir=root / "var", redis_url=probe.stack.redis_url)
        report, sweep_seconds = {}, []

        def run_sweep() -> None:
            began = time.monotonic()
            report["sweep"] = sweep(settings, LocalStorage(root / "results"))
            sweep_seconds.append(time.monotonic() - began)

        before_sweep = count_jobs(url)
        thread = threading.Thread(target=run_sweep, name="sweep")
        during = Timings()
        thread.start()
        alternate(probe, during, lambda n: thread.is_alive())
        thread.join()
        left = count_jobs(url)
    removed = report["sweep"].jobs_removed
    figures = {"before": before.figures(), "during": during.figures(), "removed": removed,
               "sweep_seconds": sweep_seconds[0], "jobs_per_second": removed / sweep_seconds[0],
               "all_expired_removed": removed == args.jobs,
               "kept_every_other_job": left == before_sweep - args.jobs + len(during.submit)}
    for name in ("submit", "poll"):
        b, d = figures["before"][name], figures["during"][name]
        figures[f"{name}_p99_ratio"] = d["p99_ms"] / b["p99_ms"]
        print(f"  {name:<7} before p50/p99 {b['p50_ms']:6.1f}/{b['p99_ms']:6.1f} ms   during (n={d['n']}) "
              f"{d['p50_ms']:6.1f}/{d['p99_ms']:6.1f} ms   p99 x{d['p99_ms'] / b['p99_ms']:.2f}   "
              f"goal p99 <= {GOALS_MS[name]:.0f} ms", flush=True)
    print(f"  sweep: {removed} jobs in {sweep_seconds[0]:.1f} s ({figures['jobs_per_second']:.0f} jobs/s); "
          f"every expired job removed: {figures['all_expired_removed']}; every other job kept: "
          f"{figures['kept_every_other_job']}", flush=True)
    return figures


def main() -> None:
    args = parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="genq-retention-") as tmp:
        for backend in args.backends:
            results[backend] = run_backend(Path(tmp) / backend, backend, args)
    harness.emit_result("retention", {"jobs": args.jobs, "backends": results})


if __name__ == "__main__":
    main()
