"""Issue 10, "memory": a worker's resident memory from the 20th to the 1,000th job.

A stack (web + one worker) with a tiny text model (tests/tiny_models.py, as
bench/throughput.py builds it). One-item jobs, each with do_sample and a prompt and seed
of its own, are submitted `--group` at a time; each group is waited for (read from the
ledger, not over HTTP) before the next is sent. The resident set size (RSS) of the
worker's pool process(es), the ones that load the model and run the items, is sampled
after the `--warmup`th job has finished, every `--sample-every` jobs, and after the
last; the goal compares the last with the first: growth = RSS(last) / RSS(warmup) - 1.

Usage:
    python bench/memory.py [--jobs 1000] [--warmup 20] [--group 10] [--backend sqlite]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from genq.devstack import Stack  # noqa: E402

MODEL = "bench-text"
MIB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="one-item jobs in all")
    parser.add_argument("--warmup", type=int, default=20, help="the job after which the first sample is taken")
    parser.add_argument("--group", type=int, default=10, help="jobs submitted together (then waited for)")
    parser.add_argument("--sample-every", type=int, default=100, help="jobs between intermediate samples")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--torch-threads", type=int, default=1, help="GENQ_TORCH_THREADS of the worker (0: torch's default)")
    parser.add_argument("--backend", default="sqlite", help="sqlite or postgres")
    parser.add_argument("--postgres-url", default=harness.DEFAULT_POSTGRES_URL, help="a server to create a fresh database on")
    parser.add_argument("--model-dir", type=Path, help="a saved causal LM (default: build a tiny GPT-2)")
    args = parser.parse_args()
    if not 0 < args.warmup < args.jobs:
        parser.error("--warmup must be between 0 and --jobs")
    return args


def write_registry(path: Path, model_dir: Path, micro_batch: int) -> Path:
    entry = {"task": "text-generation", "source": str(model_dir), "micro_batch_size": micro_batch,
             "limits": {"max_new_tokens": {"max": 1024}}}
    path.write_text(yaml.safe_dump({"models": {MODEL: entry}}))
    return path


def body(i: int, max_new_tokens: int) -> dict:
    prompt = f"memory prompt {i}: the quick brown fox" + " jumps" * (i % 7) + f" over {i * 7919 % 1000} dogs"
    return {"model": MODEL, "prompts": [prompt],
            "params": {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": max_new_tokens,
                       "seed": i}}


def sample(stack: Stack, jobs_done: int) -> dict:
    """RSS and USS (memory no other process shares) of the pool processes, in bytes."""
    pools = stack.pool_children("worker")
    if not pools:
        raise RuntimeError("the worker has no pool process")
    rss = uss = 0
    for pool in pools:
        info = pool.memory_full_info()
        rss += info.rss
        uss += info.uss
    return {"jobs": jobs_done, "rss": rss, "uss": uss, "pids": [pool.pid for pool in pools], "at": time.time()}


def run(root: Path, models_file: Path, args: argparse.Namespace) -> list[dict]:
    samples: list[dict] = []
    checkpoints = {args.warmup, args.jobs, *range(args.sample_every, args.jobs, args.sample_every)}
    with harness.database(args.backend, root, args.postgres_url) as url, \
            harness.running_stack(root, url, models_file, torch_threads=args.torch_threads) as stack:
        session, submit_url, headers = requests.Session(), f"{stack.base_url}/v1/jobs", stack.auth()
        done = 0
        while done < args.jobs:
            # a group never runs past the next checkpoint, so each sample is taken after exactly that many jobs
            size = min(args.group, min(c for c in checkpoints if c > done) - done)
            for i in range(done, done + size):
                response = session.post(submit_url, json=body(i, args.max_new_tokens), headers=headers, timeout=120)
                assert response.status_code == 202, response.text
            harness.wait_all_terminal(url, timeout=600, interval=0.02)
            done += size
            if done in checkpoints:
                samples.append(sample(stack, done))
                print(f"after {done:5d} jobs: pool RSS {samples[-1]['rss'] / MIB:8.1f} MiB  "
                      f"USS {samples[-1]['uss'] / MIB:8.1f} MiB  pids {samples[-1]['pids']}", flush=True)
        states = harness.wait_all_terminal(url, timeout=60)["states"]
    assert states == {"succeeded": args.jobs}, states
    return samples


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="genq-memory-") as tmp:
        root = Path(tmp)
        model_dir = args.model_dir or build_model(root / "model")
        models_file = write_registry(root / "models.yaml", model_dir, args.micro_batch)
        started = time.monotonic()
        samples = run(root, models_file, args)
        elapsed = time.monotonic() - started
    first, last = samples[0], samples[-1]
    growth, uss_growth = last["rss"] / first["rss"] - 1, last["uss"] / first["uss"] - 1
    restarted = first["pids"] != last["pids"]
    print(f"jobs={args.jobs} group={args.group} max_new_tokens={args.max_new_tokens} backend={args.backend} "
          f"torch_threads={args.torch_threads} in {elapsed:.0f} s")
    print(f"pool RSS after job {first['jobs']}: {first['rss'] / MIB:.1f} MiB; after job {last['jobs']}: "
          f"{last['rss'] / MIB:.1f} MiB; growth {100 * growth:+.2f} % (USS {100 * uss_growth:+.2f} %)"
          + ("  (the pool process was replaced in between!)" if restarted else ""))
    harness.emit_result("memory", {
        "jobs": args.jobs, "warmup": args.warmup, "backend": args.backend,
        "rss_first_mib": first["rss"] / MIB, "rss_last_mib": last["rss"] / MIB, "growth": growth,
        "uss_growth": uss_growth, "pool_restarted": restarted,
        "samples": [{"jobs": s["jobs"], "rss_mib": round(s["rss"] / MIB, 2), "uss_mib": round(s["uss"] / MIB, 2)}
                    for s in samples],
    })


def build_model(directory: Path) -> Path:
    from tests.tiny_models import build_tiny_text_model

    return build_tiny_text_model(directory)


if __name__ == "__main__":
    main()
