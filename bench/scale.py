"""Scaling over worker processes: items/s with 1, 2, ... N workers, through the service.

Workers are started as `genq worker --gpus ... --per-gpu k` starts them: one per GPU,
or k per GPU with `--per-gpu k` (a model too small to keep one process's GPU busy).
Step n runs n workers, placed one per GPU before any GPU gets a second; each step
starts fresh workers, warms every one of them (the model loaded in each), then times
one job of `--items` prompts per worker, from submit to the ledger's last
`finished_at`. The job is cut into slices of two micro-batches, so every worker takes
part ("ran on": the workers whose leases its items carry). Every step's workers get
the torch threads the launcher gives the largest step's (the host's cores // N), so
steps differ in their number of workers only: on a busy host, one worker with threads
for all the cores can run many times slower than with one.

Printed per step: items/s, the speedup over one worker, the scaling efficiency (items/s
with n / (n x items/s with 1); goal >= 0.95), and the mean utilisation of the GPUs in
use while the job ran (nvidia-smi, else torch.cuda.utilization; "n/a" without a GPU)
and of the host's CPU.

The model is GPT-2 small's shape in float16 built from a config with random weights
(bench/gpu_check.py builds it; no download), or with `--model tiny` the test suite's
2-layer GPT-2. With `--gpus none` the workers are CPU processes (`--per-gpu` of them,
default 2) sharing this host's cores with the web server and this client: there the
efficiency measures core contention, not genq, and the report says so. Usage:

    python bench/scale.py [--gpus all|none|0,1] [--per-gpu 1] [--model gpt2|tiny] [--items 512]
    python bench/scale.py --gpus none --model tiny      # a quick CPU run (a couple of minutes)
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_check import PARAMS, build_text_model, prompts  # noqa: E402
from bench.harness import (  # noqa: E402
    DEFAULT_POSTGRES_URL,
    database,
    emit_result,
    running_stack,
    wait_all_terminal,
    write_registry,
)
from genq.devstack import ServiceProcess, Stack, wait_for  # noqa: E402
from worker.device import host_cores, thread_share  # noqa: E402
from worker.launcher import Device, choose_gpus, discover_devices  # noqa: E402

MODEL = "scale-text"
LOADED = f"loaded model {MODEL} on"
GOAL = 0.95
DEFAULT_ITEMS = {("GPUs", "gpt2"): 512, ("GPUs", "tiny"): 2048, ("the CPU", "gpt2"): 64, ("the CPU", "tiny"): 2000}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="all", help="as `genq worker --gpus`: all, none, or indices like 0,1")
    parser.add_argument("--per-gpu", type=int, help="most workers per GPU (default 1; 2 with --gpus none)")
    parser.add_argument("--model", choices=("gpt2", "tiny"), default="gpt2",
                        help="gpt2: GPT-2 small's shape (float16 on a GPU); tiny: a 2-layer GPT-2")
    parser.add_argument("--items", type=int, help="prompts per worker in a timed job (default: by model and device, "
                        "a few seconds' work: " + ", ".join(f"{m} on {d} {n}" for (d, m), n in DEFAULT_ITEMS.items()) + ")")
    parser.add_argument("--max-new-tokens", type=int, help="(default: 64 on GPUs, 16 on the CPU)")
    parser.add_argument("--micro-batch", type=int, help="(default: 64 on GPUs, 16 on the CPU)")
    parser.add_argument("--repeats", type=int, default=1, help="timed jobs per step; the fastest counts")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="a server to create a fresh database on")
    args = parser.parse_args(argv)
    if args.per_gpu is not None and args.per_gpu < 1:
        parser.error("--per-gpu takes a number of at least 1")
    return args


# -- which workers run at step n ------------------------------------------------------------


def gpu_groups(devices: list[Device | None]) -> dict[str, int]:
    """`--gpus` values (a GPU's index, or `none`) -> the workers one launcher starts per
    copy there: 1, or a GPU's MIG instances (`--gpus 0` takes them all)."""
    if devices == [None]:
        return {"none": 1}
    return dict(Counter(device.index for device in devices))


def step_plan(groups: dict[str, int], per_gpu: int, step: int) -> list[tuple[str, int]]:
    """The launchers of step `step` as (`--gpus`, `--per-gpu`) pairs: `step` copies,
    dealt one per GPU before any GPU gets a second; GPUs that get as many share one."""
    slots = [gpu for _copy in range(per_gpu) for gpu in groups][:step]
    copies = Counter(slots)
    together: dict[int, list[str]] = {}
    for gpu, count in copies.items():
        together.setdefault(count, []).append(gpu)
    return [(",".join(gpus), count) for count, gpus in sorted(together.items(), reverse=True)]


def plan_workers(groups: dict[str, int], plan: list[tuple[str, int]]) -> int:
    return sum(groups[gpu] * count for gpus, count in plan for gpu in gpus.split(","))


# -- running a step --------------------------------------------------------------------------


def start_workers(stack: Stack, plan: list[tuple[str, int]], workers: int, threads: int) -> list[ServiceProcess]:
    """One `genq worker` per plan entry, every worker ready, each with `threads` torch
    threads (unless GENQ_TORCH_THREADS is set)."""
    env = dict(stack.env)
    env.setdefault("GENQ_TORCH_THREADS", str(threads))
    launchers = []
    for number, (gpus, count) in enumerate(plan):
        name = f"workers{number}"
        argv = [sys.executable, "-m", "genq", "worker", "--gpus", gpus, "--per-gpu", str(count), "--models", MODEL]
        stack.processes[name] = ServiceProcess(name, argv, env, stack.root)
        launchers.append(stack.processes[name])
    ready = lambda: sum(p.log().count(" ready.") for p in launchers) >= workers or not all(p.alive() for p in launchers)  # noqa: E731
    wait_for(ready, 300, what=f"{workers} workers to be ready")
    if not all(p.alive() for p in launchers):
        raise RuntimeError("a worker launcher exited:\n" + "\n".join(p.log()[-3000:] for p in launchers))
    return launchers


def stop_workers(stack: Stack) -> None:
    for name in [name for name in stack.processes if name.startswith("workers")]:
        stack.processes.pop(name).stop()


def warm_up(stack: Stack, launchers: list[ServiceProcess], workers: int, params: dict, slice_items: int) -> int:
    """Jobs of a slice per worker (twice over) until every worker has loaded the model
    and run it; returns how many jobs that took."""
    loaded = lambda: sum(p.log().count(LOADED) for p in launchers)  # noqa: E731
    for attempt in range(1, 11):
        stack.wait_terminal(stack.submit({"model": MODEL, "prompts": prompts(2 * workers * slice_items),
                                          "params": params}), timeout=1800)
        if loaded() >= workers:
            return attempt
    raise RuntimeError(f"only {loaded()} of {workers} workers loaded {MODEL} after 10 warm-up jobs")


def timed_job(stack: Stack, items: int, params: dict, gpus: list[Device]) -> dict:
    """Items/s of one job (submit -> last item committed), and the mean utilisation of
    the GPUs in use and of the host's CPU while it ran."""
    import psutil

    with Sampler(gpus) as sampler:
        psutil.cpu_percent(None)
        started = time.time()
        job_id = stack.submit({"model": MODEL, "prompts": prompts(items), "params": params})
        finished = wait_all_terminal(stack.database_url, timeout=3600)
        cpu = psutil.cpu_percent(None)
    job = stack.wait_terminal(job_id, timeout=60)
    if job["state"] != "succeeded":
        raise RuntimeError(f"the timed job ended {job['state']}: {job}")
    return {"items_per_s": items / (finished["last_finished"] - started), "gpu_util": sampler.mean(), "cpu_util": cpu,
            "ran_on": workers_that_ran(stack.database_url, job_id)}


def workers_that_ran(database_url: str, job_id: str) -> int:
    """How many workers (node names; a lease's owner is `node:pid`) ran the job's items."""
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.orm import JobItem

    with session_scope(database_url) as session:
        owners = session.scalars(select(JobItem.lease_owner).where(JobItem.job_id == job_id).distinct()).all()
    return len({owner.rsplit(":", 1)[0] for owner in owners if owner})


def run_step(stack: Stack, groups: dict[str, int], devices: list, plan: list, settings: dict) -> dict:
    workers = plan_workers(groups, plan)
    launchers = start_workers(stack, plan, workers, settings["threads"])
    try:
        warm_jobs = warm_up(stack, launchers, workers, settings["params"], settings["slice"])
        in_use = {gpu for gpus, _count in plan for gpu in gpus.split(",")}
        gpus = [d for d in devices if d is not None and d.index in in_use]
        runs = [timed_job(stack, settings["items"] * workers, settings["params"], gpus)
                for _ in range(settings["repeats"])]
    finally:
        stop_workers(stack)
    best = max(runs, key=lambda run: run["items_per_s"])
    return {"workers": workers, "launch": [f"--gpus {g} --per-gpu {c}" for g, c in plan],
            "items": settings["items"] * workers, "warm_up_jobs": warm_jobs, **best}


# -- utilisation ------------------------------------------------------------------------------


class Sampler:
    """Samples the utilisation of `gpus` every `interval` seconds in a thread, from
    `nvidia-smi` (or torch.cuda.utilization where there is none); none without GPUs."""

    def __init__(self, gpus: list[Device], interval: float = 0.5):
        self.gpus, self.interval = gpus, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        if self.gpus:
            self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            reading = gpu_utilisation()
            values = [value for value in (utilisation_of(gpu, reading) for gpu in self.gpus) if value is not None]
            if values:
                self.samples.append(sum(values) / len(values))

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def gpu_utilisation() -> dict[str, float]:
    """Each GPU's utilisation (%), keyed by its nvidia-smi index and by its UUID."""
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,utilization.gpu",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        except (subprocess.SubprocessError, OSError):
            return {}
        return parse_nvidia_smi(done.stdout) if done.returncode == 0 else {}
    return torch_utilisation()


def parse_nvidia_smi(text: str) -> dict[str, float]:
    reading = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[2].replace(".", "", 1).isdigit():  # "[N/A]" on a MIG-split GPU
            reading[parts[0]] = reading[parts[1]] = float(parts[2])
    return reading


def torch_utilisation() -> dict[str, float]:
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        return {str(i): float(torch.cuda.utilization(i)) for i in range(torch.cuda.device_count())}
    except Exception:  # no pynvml, or a driver that cannot say
        return {}


def utilisation_of(gpu: Device, reading: dict[str, float]) -> float | None:
    """A worker's device by its pin (a UUID, or an index a scheduler set), else by the
    index of the GPU it is on (a MIG instance: its GPU's figure)."""
    return reading.get(gpu.pin, reading.get(gpu.index))


# -- the run ------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    devices = choose_gpus(args.gpus, [] if args.gpus.strip().lower() in ("none", "cpu") else discover_devices())
    on_gpu = devices[0] is not None
    per_gpu = args.per_gpu or (1 if on_gpu else 2)
    micro_batch = args.micro_batch or (64 if on_gpu else 16)
    settings = {"items": args.items or DEFAULT_ITEMS["GPUs" if on_gpu else "the CPU", args.model], "slice": 2 * micro_batch, "repeats": args.repeats,
                "params": {**PARAMS, "max_new_tokens": args.max_new_tokens or (64 if on_gpu else 16)}}
    groups = gpu_groups(devices)
    steps = len(groups) * per_gpu
    settings["threads"] = int(os.environ.get("GENQ_TORCH_THREADS") or thread_share(plan_workers(
        groups, step_plan(groups, per_gpu, steps))))
    began = time.monotonic()
    report: dict = {"gpus": args.gpus, "devices": [d.pin if d else "cpu" for d in devices], "per_gpu": per_gpu,
                    "host_cores": host_cores(), "steps": []}
    with tempfile.TemporaryDirectory(prefix="genq-scale-") as tmp:
        root = Path(tmp)
        report["model"] = build_model(root / "model", args.model, on_gpu)
        models_file = write_registry(root / "models.yaml", {MODEL: {
            "task": "text-generation", "source": str(root / "model"), "dtype": report["model"]["dtype"],
            "micro_batch_size": micro_batch, "limits": {"max_new_tokens": {"max": 1024}}}})
        with database(args.backend, root, args.postgres_url) as url, running_stack(
                root, url, models_file, worker=False, slice_max_items=settings["slice"]) as stack:
            for step in range(1, steps + 1):
                row = run_step(stack, groups, devices, step_plan(groups, per_gpu, step), settings)
                report["steps"].append(row)
                print(f"  step {step}: {row['workers']} workers ({'; '.join(row['launch'])}): "
                      f"{row['items_per_s']:.1f} items/s", flush=True)
    add_efficiency(report["steps"])
    report.update(seconds=time.monotonic() - began, load_average=os.getloadavg()[0], on_gpu=on_gpu,
                  micro_batch=micro_batch, **{k: settings[k] for k in ("items", "params", "threads")})
    print_report(report)
    emit_result("scale", report)


def build_model(directory: Path, kind: str, on_gpu: bool) -> dict:
    """bench/gpu_check.py's builders: GPT-2 small's shape (saved in float16) or the
    suite's tiny GPT-2; float16 on a GPU, float32 on the CPU (half precision there is slow)."""
    model = build_text_model(directory, on_gpu=kind == "gpt2")
    return {**model, "dtype": "float16" if on_gpu else "float32"}


def add_efficiency(steps: list[dict]) -> None:
    """Speedup over the first step and efficiency = items/s with n / (n x items/s with 1)."""
    if not steps:
        return
    base = steps[0]["items_per_s"] / steps[0]["workers"]
    for step in steps:
        step["speedup"] = step["items_per_s"] / steps[0]["items_per_s"]
        step["efficiency"] = step["items_per_s"] / (step["workers"] * base)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def print_report(report: dict) -> None:
    params = report["params"]
    print(f"devices ({report['gpus']}): {', '.join(report['devices'])}; up to {report['per_gpu']} worker(s) each, "
          f"{report['threads']} torch thread(s) per worker in every step")
    print(f"model: {report['model']['shape']}, {report['model']['dtype']}; {report['items']} prompts per worker x "
          f"{params['max_new_tokens']} new tokens (sampled), micro-batch {report['micro_batch']}")
    print(f"{'workers':>7}  {'ran on':>6}  {'items':>6}  {'items/s':>8}  {'speedup':>7}  {'efficiency':>10}  "
          f"{'GPU util':>8}  {'host CPU':>8}")
    for step in report["steps"]:
        print(f"{step['workers']:>7}  {step['ran_on']:>6}  {step['items']:>6}  {step['items_per_s']:>8.1f}  "
              f"{step['speedup']:>7.2f}  {step['efficiency']:>10.2f}  {percent(step['gpu_util']):>8}  "
              f"{percent(step['cpu_util']):>8}")
    last = report["steps"][-1]
    if last["workers"] == 1:
        print("scaling: not measured (one worker; add GPUs or --per-gpu 2)")
    else:
        print(f"scaling efficiency with {last['workers']} workers: {last['efficiency']:.2f} (goal >= {GOAL})")
    if not report["on_gpu"]:
        print(f"on the CPU: {last['workers']} worker processes, the web server, Redis and this client share "
              f"{report['host_cores']} core(s) (load average {report['load_average']:.1f}); with one worker the host's "
              f"CPU was already {percent(report['steps'][0]['cpu_util'])} busy (this run and anything else on it): "
              "more workers split the same cores, and other load on the host moves the figure either way, so it "
              "measures core contention, not genq; the goal applies to GPU workers")
    print(f"took {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
