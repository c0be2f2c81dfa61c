"""Chaos soak: a stream of mixed text and image jobs while workers are killed and Redis
is restarted with no data, then a drain, then the ledger's verdict.

    python bench/chaos.py --duration 600            # the 10-minute soak
    python bench/chaos.py --duration 90             # what .ci/run runs
    python bench/chaos.py --duration 600 --s3       # outputs in S3 (a moto server it starts)

Prints: jobs accepted, jobs terminal, items with more than one result (counted by a
database trigger on every write that marks an item succeeded), orphaned files, jobs
whose counters disagree with their items, and the longest an item stayed running past
the hard time limit. Exits 1 if anything was lost, duplicated or miscounted.
"""
from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genq.devstack import RedisServer, Stack
from shared.db import session_scope
from shared.orm import ItemState, Job, JobItem
from shared.states import TERMINAL_JOB_STATES
from tests import tiny_models
from tests.helpers.ledger import (
    count_result_writes,
    items_written_more_than_once,
    jobs_with_wrong_counters,
    tenants_with_wrong_pending_totals,
)

HARD_LIMIT = 60


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of submitting and chaos")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: a SQLite file")
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and data here (default: a temporary directory)")
    parser.add_argument("--s3", action="store_true", help="keep outputs in an S3-compatible bucket (a moto server started here)")
    return parser.parse_args()


def build_registry(root: Path) -> Path:
    entries = tiny_models.tiny_registry_entries(
        tiny_models.build_tiny_text_model(root / "text"),
        tiny_models.build_tiny_unconditional_image_model(root / "uncond"),
        tiny_models.build_tiny_text_to_image_model(root / "sd"),
    )
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def random_job(rng: random.Random) -> dict:
    if rng.random() < 0.7:
        n = rng.randint(1, 20)
        return {"model": "tiny-text", "prompts": [f"chaos {rng.random():.6f}" for _ in range(n)],
                "params": {"max_new_tokens": rng.choice([8, 16, 32]), "do_sample": rng.random() < 0.5}}
    n = rng.randint(1, 4)
    model = rng.choice(["tiny-sd", "tiny-uncond"])
    params = {"num_inference_steps": rng.randint(2, 8)}
    if model == "tiny-sd":
        params.update(width=64, height=64)
    return {"model": model, "prompts": [f"picture {i}" for i in range(n)], "params": params}


class Chaos:
    def __init__(self, args, root: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.redis = RedisServer(root / "redis").start()
        url = args.database_url or f"sqlite:///{root / 'chaos.db'}"
        self.moto = self.bucket = None
        storage_settings = self.start_s3(root) if args.s3 else {}
        self.stack = Stack(root / "stack", url, self.redis.url, build_registry(root), lease_seconds=5,
                           reconcile_interval_seconds=1, slice_max_items=16, slice_soft_time_limit=HARD_LIMIT - 10,
                           slice_hard_time_limit=HARD_LIMIT, worker_max_models=3, torch_threads=1, **storage_settings)
        self.accepted: list[str] = []
        self.kills = self.redis_restarts = self.refused = 0
        self.worker_names = [f"worker{i}" for i in range(args.workers)]

    def start_s3(self, root: Path) -> dict:
        """A moto server and a bucket; the settings that put every process's outputs there."""
        from tests.helpers.s3 import MotoServer

        self.moto = MotoServer(root / "moto").start()
        name = self.moto.new_bucket()
        self.bucket = self.moto.storage(name, "chaos")
        return self.moto.settings(name, "chaos")

    def stored_files(self) -> set[str]:
        if self.bucket is not None:
            return {key for key in self.bucket.keys() if key.endswith(".png")}
        storage = self.stack.storage_dir
        return {str(p.relative_to(storage)) for p in storage.rglob("*.png")} if storage.exists() else set()

    def start(self) -> None:
        from tests.helpers.database import reset_schema

        reset_schema(self.stack.database_url)
        self.stack.migrate()
        count_result_writes(self.stack.database_url)
        self.stack.start_web()
        self.stack.start_reconciler()
        for name in self.worker_names:
            self.stack.start_worker(name)

    def run(self) -> None:
        started = time.monotonic()
        next_kill = started + self.rng.uniform(20, 40)
        restart_every = min(120.0, self.args.duration / 2)
        next_restart = started + restart_every
        while time.monotonic() - started < self.args.duration:
            self.submit_one()
            now = time.monotonic()
            if now >= next_kill:
                self.kill_a_worker()
                next_kill = now + self.rng.uniform(20, 40)
            if now >= next_restart:
                self.restart_redis()
                next_restart = now + restart_every
            time.sleep(self.rng.uniform(0.5, 1.5))

    def submit_one(self) -> None:
        try:
            response = self.stack.post("/v1/jobs", json=random_job(self.rng))
        except Exception:
            self.refused += 1
            return
        if response.status_code == 202:
            self.accepted.append(response.json()["id"])
        else:
            self.refused += 1

    def kill_a_worker(self) -> None:
        name = self.rng.choice(self.worker_names)
        self.stack.processes[name].signal_group(signal.SIGKILL)
        self.stack.processes[name].process.wait(10)
        self.stack.start_worker(name)
        self.kills += 1
        print(f"  killed and restarted {name} ({len(self.accepted)} jobs accepted so far)", flush=True)

    def restart_redis(self) -> None:
        port = self.redis.port
        self.redis.stop()
        self.redis = RedisServer(self.redis.directory.parent / f"redis{self.redis_restarts + 1}", port=port).start()
        self.redis_restarts += 1
        print(f"  restarted Redis with no data ({len(self.accepted)} jobs accepted so far)", flush=True)

    def drain(self) -> float:
        started = time.monotonic()
        deadline = started + self.args.drain_timeout
        while time.monotonic() < deadline and self.unfinished():
            time.sleep(1)
        return time.monotonic() - started

    def unfinished(self) -> int:
        with session_scope(self.stack.database_url) as session:
            return session.query(Job).filter(Job.state.notin_(TERMINAL_JOB_STATES)).count()

    def verdict(self) -> dict:
        with session_scope(self.stack.database_url) as session:
            jobs = session.query(Job).all()
            items = session.query(JobItem).all()
            wrong_pending = tenants_with_wrong_pending_totals(session)
        duplicated = items_written_more_than_once(self.stack.database_url)
        keys = {i.output_key for i in items if i.output_key and i.state == ItemState.SUCCEEDED}
        files = self.stored_files()
        longest = max(((i.finished_at - i.started_at).total_seconds() for i in items if i.finished_at and i.started_at), default=0)
        return {
            "jobs accepted": len(self.accepted),
            "jobs terminal": sum(j.state.is_terminal() for j in jobs if j.id in set(self.accepted)),
            "jobs lost": len(set(self.accepted) - {j.id for j in jobs if j.state.is_terminal()}),
            "jobs by state": dict(sorted({s: sum(j.state.value == s for j in jobs) for s in {j.state.value for j in jobs}}.items())),
            "items": len(items),
            "items succeeded": sum(i.state == ItemState.SUCCEEDED for i in items),
            "items failed": sum(i.state == ItemState.FAILED for i in items),
            "items with more than one result": duplicated,
            "jobs whose counters disagree with their items": len(jobs_with_wrong_counters(jobs, items)),
            "tenants whose pending total disagrees with their jobs": len(wrong_pending),
            "orphaned files": len(files - keys),
            "succeeded items without their file": len(keys - files),
            "max seconds an item ran past the hard limit": round(max(0.0, longest - HARD_LIMIT), 2),
            "workers killed": self.kills,
            "redis restarts": self.redis_restarts,
            "storage": "s3 (moto)" if self.bucket is not None else "local directory",
            "submits refused": self.refused,
        }

    def stop(self) -> None:
        self.stack.stop()
        self.redis.stop()
        if self.moto is not None:
            self.moto.stop()


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="genq-chaos-") as tmp:
        chaos = Chaos(args, args.workdir or Path(tmp))
        try:
            chaos.start()
            print(f"chaos: {args.duration:.0f}s of jobs with {args.workers} workers, killing one every 20-40 s, "
                  f"restarting Redis every {min(120.0, args.duration / 2):.0f} s", flush=True)
            chaos.run()
            drained = chaos.drain()
            result = chaos.verdict()
        finally:
            chaos.stop()
    print(f"drained in {drained:.1f}s")
    for key, value in result.items():
        print(f"{key:>45}: {value}")
    bad = result["jobs lost"] or result["items with more than one result"] or result["orphaned files"] \
        or result["succeeded items without their file"] or result["jobs whose counters disagree with their items"] \
        or result["tenants whose pending total disagrees with their jobs"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
