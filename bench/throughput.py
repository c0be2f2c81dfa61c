"""Throughput of the whole service against the bare model, in one run.

1. One job of N text prompts through the service as deployed: HTTP -> Redis -> a Celery
   worker process -> SQLite -> polled until done; slices of GENQ_SLICE_MAX_ITEMS' default
   (64), each sorted by prompt length on its own. Beside it, the same job through a
   service whose one slice takes the whole job (one claim, every prompt sorted together):
   what the slicing costs.
2. The same prompts through the same model and runner in this process, in one batched
   loop of the same micro-batch size (all prompts sorted by length together, as the
   one-slice job's are).
3. The design a tutorial would write: one Celery task per prompt (bench/tutorial_celery_app.py),
   the model kept warm in one prefork worker with concurrency 1, the same prompts, params
   and seeds sent as N tasks from one loop of `.delay()`.

Prints items/s for each and the ratios service/in-process (as deployed, and one
slice; and, as deployed, the median of each round's own ratio) and service/tutorial;
it also counts the tutorial's texts that differ from the in-process loop's: an item's
draws do not depend on its batch, but the model's logits do in their last bits, so
a rare sampled text differs (1 of 1,024 here: docs/determinism.md); many more would
mean the draws depend on the batch again. 1 and 2 run in turn,
`--rounds` times, and their medians are compared. Usage:
    python bench/throughput.py [--items 256] [--max-new-tokens 32] [--micro-batch 32] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import emit_result, epoch
from genq.devstack import (
    RedisServer,
    ServiceProcess,
    Stack,
    wait_for,
)
from tests.tiny_models import build_tiny_text_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--model-dir", type=Path, help="a saved causal LM (default: build a tiny GPT-2)")
    parser.add_argument("--rounds", type=int, default=5, help="service and in-process runs, in turn (medians are reported)")
    return parser.parse_args()


def write_registry(path: Path, model_dir: Path, micro_batch: int) -> Path:
    entry = {"task": "text-generation", "source": str(model_dir), "micro_batch_size": micro_batch,
             "limits": {"max_new_tokens": {"max": 1024}}}
    path.write_text(yaml.safe_dump({"models": {"bench-text": entry}}))
    return path


def prompts(n: int) -> list[str]:
    return [f"benchmark prompt {i}: the quick brown fox" + " jumps" * (i % 5) for i in range(n)]


def run_side_by_side(root: Path, models_file: Path, params: dict, items: list[str], micro_batch: int,
                     rounds: int) -> tuple[dict[str, list[float]], list[float], list[float], list[str]]:
    """`rounds` times in turn: one job of `items` through the service as deployed (slices of
    GENQ_SLICE_MAX_ITEMS' default), the same job through a service whose one slice takes
    the whole job (every micro-batch sorted by length together, one claim), then the same
    items through the same runner in this process (this machine's speed swings from minute
    to minute, so the three are measured alternately, never in blocks). Returns, per
    service, the seconds from the submit to the job's `finished_at` (the ledger's clock,
    this machine's); the seconds until the client's poll saw the deployed one finished
    (every 0.2 s: the client's choice, not the service's cost); the in-process seconds,
    and the in-process texts."""
    redises = [RedisServer(root / "redis-deployed").start(), RedisServer(root / "redis-one-slice").start()]
    stacks = {"deployed": Stack(root / "deployed", f"sqlite:///{root / 'deployed.db'}", redises[0].url, models_file),
              "one slice": Stack(root / "one-slice", f"sqlite:///{root / 'one-slice.db'}", redises[1].url,
                                 models_file, slice_max_items=len(items))}
    service: dict[str, list[float]] = {name: [] for name in stacks}
    seen, direct, texts = [], [], []
    try:
        for stack in stacks.values():
            start_stack(stack, items[0], params)
        runner = in_process_runner(models_file, params)
        for _ in range(rounds):
            for name, stack in stacks.items():
                started = time.time()
                job = stack.wait_terminal(stack.submit({"model": "bench-text", "prompts": items, "params": params}),
                                          timeout=1800)
                if name == "deployed":
                    seen.append(time.time() - started)
                assert job["state"] == "succeeded", job
                service[name].append(epoch(datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))) - started)
            seconds, texts = run_in_process(runner, params, items, micro_batch)
            direct.append(seconds)
    finally:
        for stack in stacks.values():
            stack.stop()
        for redis in redises:
            redis.stop()
    return service, seen, direct, texts


def start_stack(stack: Stack, prompt: str, params: dict) -> None:
    """Web and worker up, the model loaded by a first job before any clock starts."""
    stack.migrate()
    stack.start_web()
    stack.start_worker()
    stack.wait_terminal(stack.submit({"model": "bench-text", "prompts": [prompt], "params": params}), timeout=300)


def seeds(params: dict, n: int) -> list[int]:
    """The seeds the service gives the items of a job with `params["seed"]`."""
    return [params["seed"] + i for i in range(n)]


def in_process_runner(models_file: Path, params: dict):
    """The worker's runner of the model, set up and warmed in this process."""
    from shared.registry import load_registry
    from worker.runners import build_runner
    from worker.runners.base import ItemInput

    runner = build_runner(load_registry(models_file).get("bench-text"), "cpu")
    runner.setup()
    runner.predict([ItemInput(0, "warm up", params["seed"])], params)
    return runner


def run_in_process(runner, params: dict, items: list[str], micro_batch: int) -> tuple[float, list[str]]:
    """Seconds and texts (in item order) of the runner over micro-batches formed as a
    slice forms them (in the runner's batch order: by prompt length)."""
    from worker.batches import in_batch_order
    from worker.runners.base import ItemInput

    inputs = [ItemInput(i, prompt, seed) for i, (prompt, seed) in enumerate(zip(items, seeds(params, len(items))))]
    texts: dict[int, str] = {}
    started = time.perf_counter()
    ordered = in_batch_order(runner, inputs, params)
    for start in range(0, len(ordered), micro_batch):
        batch = ordered[start : start + micro_batch]
        texts.update((item.index, output.text) for item, output in zip(batch, runner.predict(batch, params)))
    return time.perf_counter() - started, [texts[i] for i in range(len(inputs))]


def run_tutorial(root: Path, models_file: Path, params: dict, items: list[str]) -> tuple[float, list[str]]:
    """Seconds from the first `.delay()` to the last task's completion, and the texts."""
    from bench import tutorial_celery_app as tutorial

    redis = RedisServer(root / "tutorial-redis").start()
    tutorial.app.conf.broker_url = redis.url
    argv = [sys.executable, "-m", "celery", "-A", "bench.tutorial_celery_app", "worker", "-P", "prefork",
            "--concurrency", "1", "-Q", tutorial.QUEUE, "--without-gossip", "--without-mingle", "-l", "warning"]
    env = dict(os.environ, BENCH_REDIS_URL=redis.url, BENCH_MODELS_FILE=str(models_file), PYTHONPATH=str(ROOT))
    worker = ServiceProcess("tutorial-celery", argv, env, root, cwd=ROOT)
    client = redis.client()
    try:
        tutorial.generate_one.delay(-1, items[0], params["seed"], params)  # loads the model before the clock starts
        wait_for(lambda: client.get(tutorial.DONE_KEY) == b"1", 300, 0.05, "the tutorial worker")
        client.delete(tutorial.DONE_KEY, tutorial.LAST_KEY, tutorial.RESULTS_KEY)
        first = time.time()
        for index, (prompt, seed) in enumerate(zip(items, seeds(params, len(items)))):
            tutorial.generate_one.delay(index, prompt, seed, params)
        wait_for(lambda: int(client.get(tutorial.DONE_KEY) or 0) >= len(items), 1800, 0.05, "the tutorial tasks")
        elapsed = float(client.get(tutorial.LAST_KEY)) - first
        stored = client.hgetall(tutorial.RESULTS_KEY)
    finally:
        worker.stop()
        redis.stop()
    return elapsed, [stored[str(i).encode()].decode() for i in range(len(items))]


def main() -> None:
    args = parse_args()
    params = {"max_new_tokens": args.max_new_tokens, "do_sample": True, "temperature": 1.0, "top_p": 0.95, "seed": 1}
    items = prompts(args.items)
    with tempfile.TemporaryDirectory(prefix="genq-bench-") as tmp:
        root = Path(tmp)
        model_dir = args.model_dir or build_tiny_text_model(root / "model")
        models_file = write_registry(root / "models.yaml", model_dir, args.micro_batch)
        service, seen, direct, direct_texts = run_side_by_side(root, models_file, params, items, args.micro_batch,
                                                               args.rounds)
        tutorial_s, tutorial_texts = run_tutorial(root, models_file, params, items)
    rate = {name: args.items / median(seconds) for name, seconds in service.items()}
    direct_rate, tutorial_rate = args.items / median(direct), args.items / tutorial_s
    paired = round_ratios(service["deployed"], direct)
    differing = sum(a != b for a, b in zip(direct_texts, tutorial_texts))
    print(f"items={args.items} max_new_tokens={args.max_new_tokens} micro_batch={args.micro_batch} model={model_dir}")
    print(f"service:    {median(service['deployed']):8.2f} s  {rate['deployed']:8.1f} items/s  (as deployed: slices "
          f"of {deployed_slice_items()}; submit -> the job's finished_at, median of {_seconds(service['deployed'])}; "
          f"{median(seen):.2f} s until a poll every 0.2 s saw it)")
    print(f"one slice:  {median(service['one slice']):8.2f} s  {rate['one slice']:8.1f} items/s  (the whole job one "
          f"slice, median of {_seconds(service['one slice'])})")
    print(f"in-process: {median(direct):8.2f} s  {direct_rate:8.1f} items/s  (same runner, one batched loop, median of "
          f"{_seconds(direct)}, each right after the service runs)")
    print(f"tutorial:   {tutorial_s:8.2f} s  {tutorial_rate:8.1f} items/s  (one Celery task per prompt, model warm)")
    print(f"ratio service/in-process: {rate['deployed'] / direct_rate:.2f} (one slice: "
          f"{rate['one slice'] / direct_rate:.2f})  service/tutorial: {rate['deployed'] / tutorial_rate:.2f}  "
          f"(tutorial texts differing from in-process: {differing})")
    print(f"ratio service/in-process round by round: median {median(paired):.2f} of "
          f"[{', '.join(f'{ratio:.2f}' for ratio in paired)}]")
    emit_result("throughput", {"items": args.items, "service_items_per_s": rate["deployed"],
                               "service_seen_items_per_s": args.items / median(seen),
                               "one_slice_items_per_s": rate["one slice"],
                               "in_process_items_per_s": direct_rate, "ratio": rate["deployed"] / direct_rate,
                               "ratio_one_slice": rate["one slice"] / direct_rate,
                               "ratio_by_round": median(paired), "round_ratios": paired,
                               "tutorial_items_per_s": tutorial_rate, "ratio_vs_tutorial": rate["deployed"] / tutorial_rate,
                               "tutorial_texts_differing": differing})


def round_ratios(service_seconds: list[float], direct_seconds: list[float]) -> list[float]:
    """Each round's service ÷ in-process rate: the in-process run of a round comes right
    after its service runs, so a minute in which this shared machine runs slow slows
    both sides of one ratio (the medians of the two columns may come from different
    minutes: their rounds spread by ±15 %)."""
    return [direct / service for service, direct in zip(service_seconds, direct_seconds)]


def deployed_slice_items() -> int:
    """GENQ_SLICE_MAX_ITEMS' default: what `genq up` claims at most per slice."""
    from shared.settings import Settings

    return Settings.model_fields["slice_max_items"].default


def _seconds(values: list[float]) -> str:
    return "[" + ", ".join(f"{value:.2f}" for value in values) + "] s"


if __name__ == "__main__":
    main()
