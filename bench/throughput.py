"""Throughput of the whole service against the bare model, in one run.

1. One job of N text prompts through the service: HTTP -> Redis -> a Celery worker
   process -> SQLite -> polled until done.
2. The same prompts through the same model and runner in this process, in one batched
   loop of the same micro-batch size.

Prints items/s for both and their ratio. Usage:
    python bench/throughput.py [--items 256] [--max-new-tokens 32] [--micro-batch 32]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import emit_result
from genq.devstack import (
    RedisServer,
    Stack,
)
from tests.tiny_models import build_tiny_text_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--model-dir", type=Path, help="a saved causal LM (default: build a tiny GPT-2)")
    return parser.parse_args()


def write_registry(path: Path, model_dir: Path, micro_batch: int) -> Path:
    entry = {"task": "text-generation", "source": str(model_dir), "micro_batch_size": micro_batch,
             "limits": {"max_new_tokens": {"max": 1024}}}
    path.write_text(yaml.safe_dump({"models": {"bench-text": entry}}))
    return path


def prompts(n: int) -> list[str]:
    return [f"benchmark prompt {i}: the quick brown fox" + " jumps" * (i % 5) for i in range(n)]


def run_service(root: Path, models_file: Path, params: dict, items: list[str]) -> float:
    redis = RedisServer(root / "redis").start()
    stack = Stack(root / "stack", f"sqlite:///{root / 'bench.db'}", redis.url, models_file, slice_max_items=len(items))
    try:
        stack.migrate()
        stack.start_web()
        stack.start_worker()
        warm = stack.submit({"model": "bench-text", "prompts": items[:1], "params": params})
        stack.wait_terminal(warm, timeout=300)  # load the model before the clock starts
        started = time.perf_counter()
        job_id = stack.submit({"model": "bench-text", "prompts": items, "params": params})
        job = stack.wait_terminal(job_id, timeout=1800)
        elapsed = time.perf_counter() - started
        assert job["state"] == "succeeded", job
        return elapsed
    finally:
        stack.stop()
        redis.stop()


def run_in_process(models_file: Path, params: dict, items: list[str], micro_batch: int) -> float:
    from shared.registry import load_registry
    from worker.runners import build_runner
    from worker.runners.base import ItemInput

    runner = build_runner(load_registry(models_file).get("bench-text"), "cpu")
    runner.setup()
    inputs = [ItemInput(i, prompt, params["seed"] + i) for i, prompt in enumerate(items)]
    runner.predict(inputs[:1], params)
    started = time.perf_counter()
    for start in range(0, len(inputs), micro_batch):
        runner.predict(inputs[start : start + micro_batch], params)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    params = {"max_new_tokens": args.max_new_tokens, "do_sample": True, "temperature": 1.0, "top_p": 0.95, "seed": 1}
    items = prompts(args.items)
    with tempfile.TemporaryDirectory(prefix="genq-bench-") as tmp:
        root = Path(tmp)
        model_dir = args.model_dir or build_tiny_text_model(root / "model")
        models_file = write_registry(root / "models.yaml", model_dir, args.micro_batch)
        service_s = run_service(root, models_file, params, items)
        direct_s = run_in_process(models_file, params, items, args.micro_batch)
    service_rate, direct_rate = args.items / service_s, args.items / direct_s
    print(f"items={args.items} max_new_tokens={args.max_new_tokens} micro_batch={args.micro_batch} model={model_dir}")
    print(f"service:    {service_s:8.2f} s  {service_rate:8.1f} items/s  (submit -> succeeded, polled over HTTP)")
    print(f"in-process: {direct_s:8.2f} s  {direct_rate:8.1f} items/s  (same runner, one batched loop)")
    print(f"ratio service/in-process: {service_rate / direct_rate:.2f}")
    emit_result("throughput", {"items": args.items, "service_items_per_s": service_rate,
                               "in_process_items_per_s": direct_rate, "ratio": service_rate / direct_rate})


if __name__ == "__main__":
    main()
