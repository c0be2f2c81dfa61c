"""GPU readiness in one run (a few minutes): what genq does on a real GPU node.

1. Pinning: each worker the launcher would start (`--gpus`) sees exactly its device
   (by UUID), and passes the worker's own start-up check (`python -m worker.device`).
2. Out-of-memory recovery, through the service: a micro-batch too big for the device
   (bench/gpu_runners.MemoryRunner) completes at a smaller size, and every retry starts
   with the failed call's memory freed (nothing above the runner's baseline).
3. A sticky CUDA error (a device-side assert) replaces the worker's pool process, and a
   fresh process finishes every item.
4. Items/s of a GPT-2-sized float16 model (built from a config, random weights) through
   the service, divided by the same runner's items/s in a process of its own pinned
   the same way (goal >= 0.95), then
5. 1 -> N scaling: the same job with one worker and with one worker per device.

With `--gpus none` every step runs on the CPU (a tiny GPT-2 in float32, out-of-memory
and the CUDA error simulated by the runners, no scaling), so the script stays runnable
where there is no GPU. Usage:
    python bench/gpu_check.py [--gpus all|none|0,1] [--items 512] [--max-new-tokens 64] [--micro-batch 64]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import database, emit_result, running_stack, wait_all_terminal, write_registry  # noqa: E402
from genq.devstack import wait_for  # noqa: E402
from worker.launcher import choose_gpus, discover_devices, worker_commands  # noqa: E402

TEXT_MODEL = "gpt2-sized"
PARAMS = {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "seed": 1}
PINNING_PROBE = """
import json, os, torch
count = torch.cuda.device_count() if torch.cuda.is_available() else 0
uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(count)]
uuids = [u if u.startswith("GPU-") else "GPU-" + u for u in uuids]
print(json.dumps({"count": count, "uuids": uuids, "cuda": torch.version.cuda}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="all", help="as `genq worker --gpus`: all, none, or indices like 0,1")
    parser.add_argument("--items", type=int, help="prompts per timed job (default: 512 on GPUs, 128 on the CPU)")
    parser.add_argument("--max-new-tokens", type=int, help="(default: 64 on GPUs, 16 on the CPU)")
    parser.add_argument("--micro-batch", type=int, help="(default: 64 on GPUs, 16 on the CPU)")
    parser.add_argument("--in-process", nargs=2, metavar=("MODELS_FILE", "CONFIG_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return args


# -- 1. pinning ------------------------------------------------------------------------


def check_pinning(devices) -> list[dict]:
    """What each worker the launcher would start sees, in the environment it would get."""
    rows = []
    for device, command in zip(devices, worker_commands(devices, [])):
        seen = json.loads(subprocess.run([sys.executable, "-c", PINNING_PROBE], env=command.env, capture_output=True,
                                         text=True, timeout=300, check=True).stdout.strip().splitlines()[-1])
        row = {"worker": command.name, "pinned": command.env["CUDA_VISIBLE_DEVICES"], "sees": seen["count"],
               "uuids": seen["uuids"]}
        if device is None:
            row["ok"] = seen["count"] == 0
        else:
            start_check = subprocess.run([sys.executable, "-m", "worker.device"], env=command.env, cwd=ROOT,
                                         capture_output=True, text=True, timeout=300)
            by_uuid = not device.pin.startswith("GPU-") or seen["uuids"] == [device.pin]
            row["ok"] = seen["count"] == 1 and by_uuid and start_check.returncode == 0
            row["start_check"] = start_check.returncode or "passed"
        rows.append(row)
    return rows


# -- models --------------------------------------------------------------------------------


def build_text_model(directory: Path, on_gpu: bool) -> dict:
    """GPT-2 small's shape (12 layers, width 768, 1024 positions; a BPE vocabulary of
    8192 trained here instead of 50257) on a GPU; the suite's tiny GPT-2 on the CPU."""
    if not on_gpu:
        from tests.tiny_models import build_tiny_text_model

        build_tiny_text_model(directory)
        return {"shape": "tiny GPT-2 (2 layers, width 64)", "dtype": "float32"}
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from worker.demo.text import collect_docstrings, train_tokenizer

    tokenizer = train_tokenizer(collect_docstrings(max_chars=2_000_000), vocab_size=8192, max_length=1024)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(torch.float16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    return {"shape": f"GPT-2 small shape, {millions:.0f} M parameters", "dtype": "float16"}


def registry(root: Path, text_dir: Path, dtype: str, micro_batch: int, on_gpu: bool) -> Path:
    fakes = root / "no-weights"  # the bench runners load nothing from their source
    fakes.mkdir(exist_ok=True)
    memory_options = {"item_fraction": 0.15} if on_gpu else {"item_mb": 8, "budget_mb": 40}
    return write_registry(root / "models.yaml", {
        TEXT_MODEL: {"task": "text-generation", "source": str(text_dir), "dtype": dtype,
                     "micro_batch_size": micro_batch, "limits": {"max_new_tokens": {"max": 1024}}},
        "memory": {"task": "text-generation", "source": str(fakes), "runner": "bench.gpu_runners:MemoryRunner",
                   "micro_batch_size": 16, "options": memory_options},
        "sticky": {"task": "text-generation", "source": str(fakes), "runner": "bench.gpu_runners:StickyErrorRunner",
                   "micro_batch_size": 4, "options": {"flag": str(root / "broke-once")}},
    })


def prompts(n: int) -> list[str]:
    return [f"benchmark prompt {i}: return the number of items" + " in the queue" * (i % 4) for i in range(n)]


# -- 4. the same runner in a process of its own ------------------------------------------------


def in_process_child(models_file: str, config_json: str) -> None:
    """Runs in a subprocess pinned like the first worker: the runner alone, the same
    micro-batches, after one warm-up call."""
    from shared.registry import load_registry
    from worker.batches import in_batch_order
    from worker.device import configure_torch, thread_share
    from worker.runners import build_runner
    from worker.runners.base import ItemInput

    config = json.loads(config_json)
    device = "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1") else "cpu"
    configure_torch(device, thread_share(1))
    runner = build_runner(load_registry(Path(models_file)).get(TEXT_MODEL), device)
    runner.setup()
    params = config["params"]
    inputs = [ItemInput(i, p, params["seed"] + i) for i, p in enumerate(prompts(config["items"]))]
    runner.predict(inputs[: config["micro_batch"]], params)
    started = time.perf_counter()
    for first in range(0, len(inputs), config["slice"]):  # as the worker does: slices, each sorted
        ordered = in_batch_order(runner, inputs[first : first + config["slice"]], params)
        for start in range(0, len(ordered), config["micro_batch"]):
            runner.predict(ordered[start : start + config["micro_batch"]], params)
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - started}), flush=True)


def run_in_process(models_file: Path, env: dict, items: int, micro_batch: int, params: dict) -> float:
    config = json.dumps({"items": items, "micro_batch": micro_batch, "slice": 2 * micro_batch, "params": params})
    done = subprocess.run([sys.executable, str(Path(__file__)), "--in-process", str(models_file), config], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"the in-process run failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])["seconds"]


# -- 2-5. through the service ------------------------------------------------------------------


def outputs(stack, job_id: str) -> list[dict]:
    return [json.loads(item["output"]["text"]) for item in stack.items(job_id) if item.get("output")]


def check_out_of_memory(stack) -> dict:
    job = stack.wait_terminal(stack.submit({"model": "memory", "prompts": prompts(32)}), timeout=300)
    reports = outputs(stack, job["id"])
    return {"state": job["state"], "succeeded": job["counts"]["succeeded"], "of": 32, "asked_batch": 16,
            "ran_batches": sorted({r["batch"] for r in reports}),
            "most_bytes_above_baseline_at_a_start": max((r["above_baseline_at_start"] for r in reports), default=None),
            "failed_call_alive_at_a_start": any(r["failed_call_alive_at_start"] for r in reports),
            "logged": "out of memory at micro-batch" in stack.processes["worker"].log()}


def check_sticky_error(stack) -> dict:
    before = {child.pid for child in stack.pool_children()}
    job = stack.wait_terminal(stack.submit({"model": "sticky", "prompts": prompts(8)}), timeout=300)
    ran_in = {r["pid"] for r in outputs(stack, job["id"])}
    log = stack.processes["worker"].log()
    return {"state": job["state"], "succeeded": job["counts"]["succeeded"], "of": 8,
            "broken_process_replaced": bool(before) and not (before & ran_in),
            "exit_70_logged": "status 70" in log or "exitcode 70" in log}


def service_rate(stack, items: list[str], params: dict, warm_items: int) -> float:
    """Items/s of one timed job, from its submit to the ledger's last `finished_at`,
    after a warm-up job (models loaded in every worker) has finished."""
    stack.wait_terminal(stack.submit({"model": TEXT_MODEL, "prompts": items[:warm_items], "params": params}), 900)
    started = time.time()
    job_id = stack.submit({"model": TEXT_MODEL, "prompts": items, "params": params})
    finished = wait_all_terminal(stack.database_url, timeout=1800)
    job = stack.wait_terminal(job_id, timeout=60)
    assert job["state"] == "succeeded", job
    return len(items) / (finished["last_finished"] - started)


def main() -> None:
    args = parse_args()
    if args.in_process:
        return in_process_child(*args.in_process)
    devices = choose_gpus(args.gpus, discover_devices())
    on_gpu = devices[0] is not None
    items = args.items or (512 if on_gpu else 128)
    micro_batch = args.micro_batch or (64 if on_gpu else 16)
    params = {**PARAMS, "max_new_tokens": args.max_new_tokens or (64 if on_gpu else 16)}
    first = "none" if not on_gpu else devices[0].index
    one = [d for d in devices if d is None or d.index == devices[0].index]  # `--gpus <first>`: a MIG GPU's instances
    report: dict = {"gpus": args.gpus, "devices": [d.pin if d else "cpu" for d in devices]}
    began = time.monotonic()

    report["pinning"] = check_pinning(devices)
    with tempfile.TemporaryDirectory(prefix="genq-gpu-check-") as tmp:
        root = Path(tmp)
        report["model"] = build_text_model(root / "text", on_gpu)
        models_file = registry(root, root / "text", report["model"]["dtype"], micro_batch, on_gpu)
        pinned_env = worker_commands(devices[:1], [])[0].env
        in_process_s = [run_in_process(models_file, pinned_env, items, micro_batch, params)]
        with database("sqlite", root) as url, running_stack(root, url, models_file, worker=False,
                                                             slice_max_items=2 * micro_batch) as stack:
            stack.start_worker(gpus=first)
            report["out_of_memory"] = check_out_of_memory(stack)
            report["sticky_error"] = check_sticky_error(stack)
            wait_for(lambda: len(stack.pool_children()) == len(one), 60, what="the replaced pool process")
            report["service_items_per_s"] = service_rate(stack, prompts(items), params, micro_batch)
            in_process_s.append(run_in_process(models_file, pinned_env, items, micro_batch, params))  # worker idle
            report["in_process_items_per_s"] = items / min(in_process_s)  # the better of a run before and after
            report["service_over_in_process"] = report["service_items_per_s"] / report["in_process_items_per_s"]
            if len(devices) > len(one):
                stack.processes.pop("worker").stop()
                workers = stack.start_worker(name="workers", gpus=args.gpus)
                wait_for(lambda: workers.log().count(" ready.") >= len(devices), 300, what="every GPU's worker")
                many = prompts(items * len(devices))
                rate = service_rate(stack, many, params, micro_batch * 8 * len(devices))  # warms every worker
                speedup = rate / report["service_items_per_s"]
                report["scaling"] = {"from_workers": len(one), "workers": len(devices), "items_per_s": rate,
                                     "speedup": speedup, "efficiency": speedup * len(one) / len(devices)}
    report["seconds"] = time.monotonic() - began
    print_report(report, items, micro_batch, params)
    emit_result("gpu_check", report)


def print_report(report: dict, items: int, micro_batch: int, params: dict) -> None:
    print(f"devices ({report['gpus']}): {', '.join(report['devices'])}")
    for row in report["pinning"]:
        print(f"  pinning {row['worker']}: CUDA_VISIBLE_DEVICES={row['pinned']!r} sees {row['sees']} device(s) "
              f"{row['uuids']} start check {row.get('start_check', 'n/a (CPU)')} -> {'ok' if row['ok'] else 'WRONG'}")
    oom = report["out_of_memory"]
    print(f"out of memory: {oom['state']} {oom['succeeded']}/{oom['of']} items; asked micro-batch {oom['asked_batch']}, "
          f"ran at {oom['ran_batches']}; most bytes above baseline when a call started: "
          f"{oom['most_bytes_above_baseline_at_a_start']}; a failed call's tensors alive at a start: "
          f"{oom['failed_call_alive_at_a_start']}; logged: {oom['logged']}")
    sticky = report["sticky_error"]
    print(f"sticky CUDA error: {sticky['state']} {sticky['succeeded']}/{sticky['of']} items; broken process "
          f"replaced: {sticky['broken_process_replaced']}; exit 70 logged: {sticky['exit_70_logged']}")
    print(f"model: {report['model']['shape']}, {report['model']['dtype']}; {items} prompts x "
          f"{params['max_new_tokens']} new tokens (sampled), micro-batch {micro_batch}")
    print(f"in-process: {report['in_process_items_per_s']:8.1f} items/s (the runner alone, pinned like the worker; "
          "the better of a run before and one after the service's)")
    print(f"service:    {report['service_items_per_s']:8.1f} items/s (submit -> last item committed)")
    print(f"ratio service/in-process: {report['service_over_in_process']:.3f} (goal >= 0.95)")
    if "scaling" in report:
        scaling = report["scaling"]
        print(f"scaling: {scaling['from_workers']} -> {scaling['workers']} workers: {scaling['items_per_s']:.1f} items/s, "
              f"x{scaling['speedup']:.2f} (efficiency {scaling['efficiency']:.2f})")
    else:
        print("scaling: not measured (one device)")
    print(f"took {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
