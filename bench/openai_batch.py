"""Issue 13: a completions batch through the `openai` package against the same prompts
as one native genq job, on one stack (web, one worker, the reconciler), in one run.

1. Native: POST /v1/jobs with N prompts (seeds 0..N-1), polled until it finishes.
2. SDK: the same N prompts as a JSONL file of /v1/completions lines (`seed` i): upload,
   create the batch, poll `retrieve` until it is completed, download the output file.
3. Native again: the batch is compared with the mean of the two native runs, so a load
   that drifts during the run (a shared machine) does not decide the ratio.

Each is timed from its first request to the client having the results, so the batch
pays for its upload, the validation of every line, the reconciler's finalization and
the download. Prints items/s of both and their ratio (the issue's goal: >= 0.95), and
checks that every batch answer equals the native job's text for the same seed.

Usage:
    python bench/openai_batch.py [--lines 10000] [--backend sqlite|postgres] [--max-tokens 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from genq.client import Job  # noqa: E402
from tests.tiny_models import build_tiny_text_model  # noqa: E402

WORDS = ["The worker", "Open the file", "Return the number", "Rain in the", "Seven small cats", "def add(a, b):"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--postgres-url", default=harness.DEFAULT_POSTGRES_URL)
    parser.add_argument("--timeout", type=float, default=3600)
    return parser.parse_args()


def run_native(stack, prompts: list[str], max_tokens: int) -> tuple[float, dict[int, str]]:
    started = time.time()
    job_id = stack.submit({"model": "tiny-text", "inputs": [{"prompt": p, "seed": i} for i, p in enumerate(prompts)],
                           "params": {"max_new_tokens": max_tokens}})
    job = Job(stack.client(), job_id)
    job.wait(timeout=3600, interval=0.2)
    texts = {item["index"]: item["output"]["text"] for item in job.items(page_size=1000)}
    return time.time() - started, texts


def run_sdk(stack, prompts: list[str], max_tokens: int) -> tuple[float, dict[int, str]]:
    import openai

    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, _strict_response_validation=True)
    lines = [json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/completions",
                         "body": {"model": "tiny-text", "prompt": p, "max_tokens": max_tokens, "seed": i}})
             for i, p in enumerate(prompts)]
    started = time.time()
    file = client.files.create(file=("bench.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    output = client.files.content(batch.output_file_id).text
    elapsed = time.time() - started
    texts = {int(line["custom_id"]): line["response"]["body"]["choices"][0]["text"]
             for line in map(json.loads, output.splitlines())}
    return elapsed, texts


def main() -> None:
    args = parse_args()
    prompts = [f"{WORDS[i % len(WORDS)]} {i}" for i in range(args.lines)]
    with tempfile.TemporaryDirectory(prefix="genq-openai-batch-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_text_model(root / "model")
        models_file = harness.write_registry(root / "models.yaml", {"tiny-text": {
            "task": "text-generation", "source": str(model_dir), "micro_batch_size": 64,
            "limits": {"max_new_tokens": {"max": 128}}}})
        with harness.database(args.backend, root, args.postgres_url) as url, \
                harness.running_stack(root, url, models_file) as stack:
            stack.start_reconciler()
            stack.wait_terminal(stack.submit({"model": "tiny-text", "prompts": ["warm up"]}), timeout=120)
            before_s, native = run_native(stack, prompts, args.max_tokens)
            sdk_s, batch = run_sdk(stack, prompts, args.max_tokens)
            after_s, _ = run_native(stack, prompts, args.max_tokens)
    assert batch == native, "a batch answer differs from the native job's text for the same seed"
    native_s = (before_s + after_s) / 2
    native_rate, sdk_rate = args.lines / native_s, args.lines / sdk_s
    print(f"lines={args.lines} backend={args.backend} max_tokens={args.max_tokens} "
          f"load average at the end={os.getloadavg()[1]:.2f} (5 min) on {os.cpu_count()} CPUs")
    print(f"{'native job':<14} {native_s:8.1f} s {native_rate:9.1f} items/s  (runs of {before_s:.1f} and "
          f"{after_s:.1f} s)")
    print(f"{'openai batch':<14} {sdk_s:8.1f} s {sdk_rate:9.1f} items/s")
    print(f"ratio (batch / native items/s): {sdk_rate / native_rate:.3f}   (goal >= 0.95)")
    harness.emit_result("openai_batch", {"lines": args.lines, "backend": args.backend, "native_s": native_s,
                                         "sdk_s": sdk_s, "ratio": sdk_rate / native_rate})


if __name__ == "__main__":
    main()
