"""Issue 10, cross-job batching: N one-item jobs of one model against one N-item job of
the same model, on the same stack in the same run. If the worker batches items across
jobs, the two rates meet; if each job costs a claim, a slice and a model call of its own,
the one-item jobs fall far behind.

Each mode is submitted while the worker is busy with a gate job (a model that sleeps);
once every submit has been answered the gate is cancelled, and the rate is measured from
the first claim of the mode's items to its last job's `finished_at` (the ledger's own
timestamps): the work as the worker meets it, "submitted at once", not how fast this
client's HTTP requests go in. The end-to-end figure (first submit to last finish) is
printed beside it. The model is the no-op runner (the service's own cost) or a tiny GPT-2
(a real micro-batched model call).

Usage:
    python bench/crossjob.py [--items 256] [--model noop|tiny-text] [--backend sqlite|postgres]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from genq.devstack import wait_for  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--model", choices=["noop", "tiny-text"], default="noop")
    parser.add_argument("--backend", default="sqlite", help="sqlite or postgres")
    parser.add_argument("--threads", type=int, default=8, help="clients submitting the one-item jobs")
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tiny-text only")
    parser.add_argument("--postgres-url", default=harness.DEFAULT_POSTGRES_URL)
    parser.add_argument("--timeout", type=float, default=1800)
    return parser.parse_args()


def model_entry(args: argparse.Namespace, root: Path) -> dict:
    if args.model == "noop":
        return harness.noop_entry(args.micro_batch)
    from tests.tiny_models import build_tiny_text_model

    model_dir = build_tiny_text_model(root / "model")
    return {"task": "text-generation", "source": str(model_dir), "micro_batch_size": args.micro_batch,
            "limits": {"max_new_tokens": {"max": 1024}}}


def params(args: argparse.Namespace) -> dict:
    """The same parameters for every job, so nothing but job boundaries keeps items apart."""
    if args.model == "noop":
        return {"seed": 1}
    return {"max_new_tokens": args.max_new_tokens, "do_sample": False, "seed": 1}


def behind_a_gate(stack, url: str, submit, timeout: float) -> tuple[float, float]:
    """Run `submit()` while the worker is held by a gate job, release the gate, and
    return (seconds from the first claim to the last finish, seconds from the first
    submit to the last finish) of the jobs submitted."""
    gate = stack.submit({"model": "gate", "prompts": ["gate"] * 10_000})
    wait_for(lambda: stack.get(f"/v1/jobs/{gate}").json()["state"] == "running", 60, 0.05, "the gate job to run")
    started = time.time()
    submit()
    assert stack.post(f"/v1/jobs/{gate}/cancel").status_code == 200
    harness.wait_all_terminal(url, timeout)
    first_claim, last_finish = claim_span(url, since=started)
    return last_finish - first_claim, last_finish - started


def claim_span(url: str, since: float) -> tuple[float, float]:
    """The first `started_at` of the items of model `bench` jobs created after `since`,
    and the last `finished_at` of those jobs (epoch seconds)."""
    from datetime import datetime, timezone

    from sqlalchemy import func, select

    from shared.db import session_scope
    from shared.orm import Job, JobItem

    created_after = datetime.fromtimestamp(since, timezone.utc).replace(tzinfo=None)
    with session_scope(url) as session:
        jobs = select(Job.id).where(Job.model == "bench", Job.created_at >= created_after)
        first = session.scalar(select(func.min(JobItem.started_at)).where(JobItem.job_id.in_(jobs)))
        last = session.scalar(select(func.max(Job.finished_at)).where(Job.id.in_(jobs)))
    return harness.epoch(first), harness.epoch(last)


def one_big_job(stack, url: str, body: dict, threads: int, timeout: float) -> tuple[float, float]:
    return behind_a_gate(stack, url, lambda: stack.submit(body), timeout)


def many_small_jobs(stack, url: str, body: dict, threads: int, timeout: float) -> tuple[float, float]:
    bodies = [{**body, "prompts": [prompt]} for prompt in body["prompts"]]
    return behind_a_gate(stack, url, lambda: harness.submit_concurrently(stack, bodies, threads), timeout)


def main() -> None:
    args = parse_args()
    prompts = [f"benchmark prompt {i}: the quick brown fox" for i in range(args.items)]
    body = {"model": "bench", "prompts": prompts, "params": params(args)}
    with tempfile.TemporaryDirectory(prefix="genq-crossjob-") as tmp:
        root = Path(tmp)
        models = {"bench": model_entry(args, root), "gate": harness.noop_entry(1, sleep_ms_per_item=20)}
        models_file = harness.write_registry(root / "models.yaml", models)
        with harness.database(args.backend, root, args.postgres_url) as url, \
                harness.running_stack(root, url, models_file, slice_max_items=max(64, args.micro_batch)) as stack:
            stack.wait_terminal(stack.submit({**body, "prompts": prompts[:1]}), timeout=300)  # load the model
            big_s, big_e2e = one_big_job(stack, url, body, args.threads, args.timeout)
            small_s, small_e2e = many_small_jobs(stack, url, body, args.threads, args.timeout)
            states = harness.wait_all_terminal(url, args.timeout)["states"]
    assert states == {"succeeded": args.items + 2, "cancelled": 2}, states
    big_rate, small_rate = args.items / big_s, args.items / small_s
    print(f"items={args.items} model={args.model} backend={args.backend} micro_batch={args.micro_batch} threads={args.threads}")
    print(f"one {args.items}-item job:   {big_s:8.2f} s  {big_rate:8.1f} items/s  (end to end {args.items / big_e2e:.1f})")
    print(f"{args.items} one-item jobs:  {small_s:8.2f} s  {small_rate:8.1f} items/s  (end to end {args.items / small_e2e:.1f})")
    print(f"ratio one-item jobs / one job: {small_rate / big_rate:.3f}")
    harness.emit_result("crossjob", {"model": args.model, "backend": args.backend, "items": args.items,
                                     "one_job_items_per_s": big_rate, "one_item_jobs_items_per_s": small_rate,
                                     "ratio": small_rate / big_rate,
                                     "end_to_end_ratio": big_e2e / small_e2e})


if __name__ == "__main__":
    main()
