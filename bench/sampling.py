"""What the text runner's seeded sampling costs against transformers' own, in one process.

On one batch of prompts (default 32 prompts x 32 new tokens) and one model (default a
tiny GPT-2, built offline), each timed `--repeats` times, interleaved, median reported:

  seeded top_p 0.95  TextRunner.predict, do_sample, temperature 1, top_p 0.95
  seeded top_p 1.0   the same with top_p 1.0
  seeded top_k 40    the same with temperature 0.8, top_k 40 (demo-text's defaults)
  plain  ...         model.generate(do_sample=True) with the same settings on the same
                     encoded batch (one shared random stream: fast, not batch-independent)
  greedy             TextRunner.predict without sampling
  one at a time      TextRunner.predict seeded (top_p 0.95), one prompt per call

The goal: seeded / plain >= 0.90 for each setting (per-row seeding costs at most 10 %).
`--shape demo` builds an untrained model of demo-text's shape (4,096-token vocabulary,
2 layers of width 128) instead of the tiny test GPT-2 (about 400 tokens). Usage:
    python bench/sampling.py [--prompts 32] [--max-new-tokens 32] [--repeats 5] [--shape tiny|demo]
                             [--model-dir DIR] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import emit_result, write_registry  # noqa: E402
from bench.throughput import prompts  # noqa: E402
from tests.tiny_models import build_tiny_text_model  # noqa: E402

GOAL = 0.90


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 on a busy machine)")
    parser.add_argument("--shape", choices=("tiny", "demo"), default="tiny", help="the model built when no --model-dir")
    parser.add_argument("--model-dir", type=Path, help="a saved causal LM (default: build one of --shape)")
    return parser.parse_args()


def load_runner(root: Path, model_dir: Path, device: str):
    from shared.registry import load_registry
    from worker.runners import build_runner

    entry = {"task": "text-generation", "source": str(model_dir), "limits": {"max_new_tokens": {"max": 1024}}}
    models_file = write_registry(root / "models.yaml", {"bench-text": entry})
    runner = build_runner(load_registry(models_file).get("bench-text"), device)
    runner.setup()
    return runner


SETTINGS = {  # name -> sampling settings, each run seeded (the runner) and plain (generate)
    "top_p 0.95": {"temperature": 1.0, "top_k": 0, "top_p": 0.95},
    "top_p 1.0": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    "top_k 40": {"temperature": 0.8, "top_k": 40, "top_p": 1.0},
}


def build_demo_shaped_model(directory: Path) -> Path:
    """An untrained GPT-2 of demo-text's full shape, with its tokenizer recipe (speed only)."""
    from worker.demo.text import FULL, collect_docstrings, make_model, train_tokenizer

    tokenizer = train_tokenizer(collect_docstrings(3_000_000), FULL.vocab_size, FULL.block)
    make_model(tokenizer, FULL).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def cases(runner, texts: list[str], max_new_tokens: int) -> dict[str, Callable[[], object]]:
    """name -> a call that generates for the whole batch once."""
    from worker.runners.base import ItemInput

    inputs = [ItemInput(i, text, 1 + i) for i, text in enumerate(texts)]
    sampled = {name: {"max_new_tokens": max_new_tokens, "do_sample": True, **setting} for name, setting in SETTINGS.items()}

    def one_at_a_time():
        for item in inputs:
            runner.predict([item], sampled["top_p 0.95"])

    calls: dict[str, Callable[[], object]] = {}
    for name, params in sampled.items():
        calls[f"seeded {name}"] = lambda params=params: runner.predict(inputs, params)
        calls[f"plain {name}"] = plain_generate(runner, texts, max_new_tokens, SETTINGS[name])
    calls["greedy"] = lambda: runner.predict(inputs, {"max_new_tokens": max_new_tokens})
    calls["one at a time"] = one_at_a_time
    return calls


def plain_generate(runner, texts: list[str], max_new_tokens: int, setting: dict) -> Callable[[], object]:
    """transformers' batched sampling with `setting` on the runner's own encoding of the
    batch, decoded as the runner decodes."""
    import torch
    from transformers import GenerationConfig

    from worker.runners.text import trim_at_eos

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, **setting,
                              num_beams=1, eos_token_id=runner.model.generation_config.eos_token_id,
                              pad_token_id=runner.tokenizer.pad_token_id)
    eos_ids = set(runner._eos_ids(runner.tokenizer, runner.model))

    def call():
        input_ids, mask = runner._encode(texts, runner._lengths({"max_new_tokens": max_new_tokens})[1])
        with torch.inference_mode():
            output = runner.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        rows = output[:, input_ids.shape[1]:].tolist()
        return [runner.tokenizer.decode(trim_at_eos(row, eos_ids), skip_special_tokens=True) for row in rows]

    return call


def measure(calls: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """name -> median seconds; the calls take turns, so background load hits them alike."""
    for call in calls.values():
        call()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync()
            started = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def device_sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def main() -> None:
    args = parse_args()
    texts = prompts(args.prompts)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="genq-sampling-") as tmp:
        model_dir = args.model_dir or (build_demo_shaped_model(Path(tmp) / "model") if args.shape == "demo"
                                       else build_tiny_text_model(Path(tmp) / "model"))
        runner = load_runner(Path(tmp), model_dir, args.device)
        seconds = measure(cases(runner, texts, args.max_new_tokens), args.repeats, device_sync(args.device))
    rates = {name: args.prompts / s for name, s in seconds.items()}
    ratios = {name: rates[f"seeded {name}"] / rates[f"plain {name}"] for name in SETTINGS}
    print(f"prompts={args.prompts} max_new_tokens={args.max_new_tokens} repeats={args.repeats} "
          f"device={args.device} threads={args.threads or 'default'} shape={'--model-dir' if args.model_dir else args.shape} "
          f"vocabulary={runner.model.config.vocab_size}")
    for name, rate in rates.items():
        print(f"{name:<18} {seconds[name] * 1000:9.1f} ms  {rate:8.1f} items/s")
    print("ratio seeded/plain: " + "  ".join(f"{name}: {ratio:.2f}" for name, ratio in ratios.items())
          + f"  (goal >= {GOAL:.2f})")
    emit_result("sampling", {
        "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "device": args.device,
        "vocabulary": runner.model.config.vocab_size,
        "ratio": ratios["top_p 0.95"], "ratio_top_p_1": ratios["top_p 1.0"], "ratio_top_k": ratios["top_k 40"],
        "seeded_items_per_s": rates["seeded top_p 0.95"], "seeded_top_p_1_items_per_s": rates["seeded top_p 1.0"],
        "seeded_top_k_items_per_s": rates["seeded top_k 40"],
        "plain_items_per_s": rates["plain top_p 0.95"], "plain_top_p_1_items_per_s": rates["plain top_p 1.0"],
        "plain_top_k_items_per_s": rates["plain top_k 40"],
        "greedy_items_per_s": rates["greedy"], "one_at_a_time_items_per_s": rates["one at a time"],
    })


if __name__ == "__main__":
    main()
