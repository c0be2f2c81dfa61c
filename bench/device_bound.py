"""Goal 5 for a model that waits on a device: the service against the model alone,
when the model takes time but no CPU of this machine (a GPU's stand-in).

bench/throughput.py runs a tiny text model on these two cores, where the model, the
web, the database and the worker's own bookkeeping all take the same CPU; this one
asks what a GPU worker would see: whether the model is kept busy, or waits on claims,
commits and messages between micro-batches. The model is bench/noop_runner.py
sleeping `--sleep-ms` per item. Per backend and round, in turn: one job of `--items`
items through the service (submit -> its `finished_at`), then the same micro-batches
through the runner in this process. Prints items/s of both and their ratio (medians),
and from the ledger how long the model stood between slices: the gaps from one slice's
last result to the next slice's claim (a slice claimed while the one before ran has none).

Usage:
    python bench/device_bound.py [--backends sqlite,postgres] [--items 3000] [--sleep-ms 2]
                                 [--micro-batch 16] [--slice 64] [--rounds 3]
"""
from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

MODEL = "device"


def parse_args():
    parser = harness.backend_parser(__doc__)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--sleep-ms", type=float, default=2.0, help="the model's time per item")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--slice", type=int, default=64, help="GENQ_SLICE_MAX_ITEMS")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def in_process(entry: dict, items: int, micro_batch: int) -> float:
    """Items/s of the runner alone over the same micro-batches."""
    from bench.noop_runner import NoopRunner
    from shared.registry import ModelSpec
    from worker.runners.base import ItemInput

    runner = NoopRunner(ModelSpec(name=MODEL, registry_dir=ROOT, **entry))
    inputs = [ItemInput(i, f"p{i}", i) for i in range(items)]
    started = time.perf_counter()
    for start in range(0, items, micro_batch):
        runner.predict(inputs[start:start + micro_batch], {})
    return items / (time.perf_counter() - started)


def through_service(stack, items: int) -> tuple[float, str]:
    """Items/s of one job through the service, from its submit to its `finished_at`; the job's id."""
    submitted = time.time()
    job = stack.wait_terminal(stack.submit({"model": MODEL, "prompts": [f"p{i}" for i in range(items)]}), timeout=1800)
    assert job["state"] == "succeeded", job
    return items / (datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp() - submitted), job["id"]


def gaps_between_slices(url: str, job_id: str) -> list[float]:
    """Seconds from each slice's last result to the next slice's claim, where positive (the
    model stood idle between them). The items of a slice share their `started_at`."""
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.orm import JobItem

    with session_scope(url) as session:
        rows = session.execute(select(JobItem.started_at, JobItem.finished_at).where(JobItem.job_id == job_id)).all()
    last_result: dict[datetime, datetime] = {}
    for started, finished in rows:
        last_result[started] = max(finished, last_result.get(started, finished))
    claims = sorted(last_result)
    gaps = ((claims[k + 1] - last_result[claims[k]]).total_seconds() for k in range(len(claims) - 1))
    return [gap for gap in gaps if gap > 0]


def run_backend(root: Path, backend: str, args) -> dict:
    entry = harness.noop_entry(args.micro_batch, args.sleep_ms)
    models_file = harness.write_registry(root / "models.yaml", {MODEL: entry})
    service, alone, gaps = [], [], []
    with harness.database(backend, root, args.postgres_url) as url, \
            harness.running_stack(root, url, models_file, slice_max_items=args.slice) as stack:
        stack.wait_terminal(stack.submit({"model": MODEL, "prompts": ["warm"]}))  # the runner is loaded
        for _ in range(args.rounds):
            rate, job_id = through_service(stack, args.items)
            service.append(rate)
            gaps.append(gaps_between_slices(url, job_id))
            alone.append(in_process(entry, args.items, args.micro_batch))
    return {"service_items_per_s": median(service), "in_process_items_per_s": median(alone),
            "ratio": median(service) / median(alone), "ratios": [s / a for s, a in zip(service, alone)],
            "idle_gaps": [len(job) for job in gaps], "idle_ms": [round(sum(job) * 1000, 1) for job in gaps]}


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="genq-device-bound-") as tmp:
        rows = {backend: run_backend(Path(tmp) / backend, backend, args) for backend in args.backends}
    print(f"items={args.items} sleep_ms={args.sleep_ms:g} micro_batch={args.micro_batch} slice={args.slice} "
          f"rounds={args.rounds}")
    for backend, row in rows.items():
        print(f"{backend:<9} service {row['service_items_per_s']:7.1f} items/s  model alone "
              f"{row['in_process_items_per_s']:7.1f} items/s  ratio {row['ratio']:.3f}  "
              f"(rounds: {', '.join(f'{r:.3f}' for r in row['ratios'])}); the model idle between slices "
              f"{', '.join(f'{n}x {ms:g} ms' for n, ms in zip(row['idle_gaps'], row['idle_ms']))}")
    harness.emit_result("device_bound", {"items": args.items, "sleep_ms": args.sleep_ms, "backends": rows})


if __name__ == "__main__":
    main()
