"""`genq worker --gpus ...`: one worker process per GPU, each pinned before torch loads.

The launcher itself never imports torch. Where the devices come from:

- a `CUDA_VISIBLE_DEVICES` already in the environment (a Slurm or Kubernetes allocation,
  a container runtime) is respected: each of its entries (indices, `GPU-` UUIDs, `MIG-`
  ids) becomes one worker, pinned to that entry as written, and `--gpus 0,1` picks
  entries by position (as CUDA numbers them);
- otherwise `nvidia-smi -L` lists them: each GPU becomes one worker pinned by its UUID
  (so no index can mean another device), and a GPU split into MIG instances gives one
  worker per instance instead; `--gpus 0,1` picks GPUs by their nvidia-smi index. An
  `nvidia-smi` that is installed but fails stops the launcher with its error, instead
  of a CPU worker quietly taking GPU work.

Each GPU child also gets `CUDA_DEVICE_ORDER=PCI_BUS_ID` (CUDA's own order is fastest
first, nvidia-smi's is PCI) and `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`
(less fragmentation, so memory freed after an out-of-memory error can be reused),
unless the environment already sets them. Every child gets `GENQ_TORCH_THREADS` = its
share of the host's cores (cores // workers, at least 1) unless that is set.

`--per-gpu k` starts k workers on each device (named `gpu0-1@host`, ...): a model too
small to keep one process's GPU busy (or, with `--gpus none`, k CPU workers).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import product

from shared.processes import dies_with_this_process
from worker.device import thread_share


class LaunchError(Exception):
    """The requested GPUs cannot be served on this machine."""


@dataclass(frozen=True)
class Device:
    """One device a worker is pinned to: `pin` goes into CUDA_VISIBLE_DEVICES, `name`
    into the node name, `index` is what `--gpus` selects it by."""

    name: str
    pin: str
    index: str


@dataclass(frozen=True)
class WorkerCommand:
    name: str
    argv: list[str]
    env: dict[str, str]


_GPU_LINE = re.compile(r"^GPU (\d+):.*?(?:\(UUID: (GPU-[^)\s]+)\))?\s*$")
_MIG_LINE = re.compile(r"^\s+MIG .*?Device\s+(\d+):.*?(?:\(UUID: (MIG-[^)\s]+)\))?\s*$")
_NO_DEVICES = ("", "-1", "none", "nodevfiles", "void")


def discover_devices(env: dict[str, str] | None = None) -> list[Device]:
    """The devices workers may be pinned to (empty when this machine shows none)."""
    env = dict(os.environ if env is None else env)
    preset = env.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        return devices_from_visible(preset)
    return devices_from_listing(nvidia_smi_listing())


def devices_from_visible(value: str) -> list[Device]:
    """One device per entry of a CUDA_VISIBLE_DEVICES set by someone else."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if not entries or entries[0].lower() in _NO_DEVICES:
        return []
    return [Device(name=f"gpu{entry}" if entry.isdigit() else entry[:12].lower().rstrip("-"), pin=entry, index=str(i))
            for i, entry in enumerate(entries)]


def nvidia_smi_listing() -> str:
    """`nvidia-smi -L`'s output; empty when nvidia-smi is not installed. An nvidia-smi
    that fails (no driver loaded, a GPU fallen off the bus) raises `LaunchError`."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (subprocess.SubprocessError, OSError) as exc:
        raise LaunchError(f"nvidia-smi is installed but could not run ({exc}); "
                          "fix the NVIDIA driver, or start CPU workers with --gpus none") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no message").splitlines()[-1]
        raise LaunchError(f"nvidia-smi is installed but failed (exit {done.returncode}): {said}; "
                          "fix the NVIDIA driver, or start CPU workers with --gpus none")
    return done.stdout


def devices_from_listing(listing: str) -> list[Device]:
    """Devices from `nvidia-smi -L`: each GPU by UUID, or each of its MIG instances."""
    gpus: list[tuple[str, str]] = []
    migs: dict[str, list[tuple[str, str]]] = {}
    for line in listing.splitlines():
        if gpu := _GPU_LINE.match(line):
            gpus.append((gpu[1], gpu[2] or gpu[1]))
        elif (mig := _MIG_LINE.match(line)) and gpus:
            parent = gpus[-1][0]
            if not mig[2]:
                raise LaunchError(f"nvidia-smi lists MIG device {mig[1]} of GPU {parent} without a UUID; "
                                  "set CUDA_VISIBLE_DEVICES to the MIG devices to use")
            migs.setdefault(parent, []).append((mig[1], mig[2]))
    devices = []
    for index, pin in gpus:
        instances = migs.get(index)
        if not instances:
            devices.append(Device(name=f"gpu{index}", pin=pin, index=index))
        devices.extend(Device(name=f"gpu{index}-mig{n}", pin=mig_pin, index=index) for n, mig_pin in instances or [])
    return devices


def choose_gpus(requested: str, available: list[Device]) -> list[Device | None]:
    """`none` -> one CPU worker; `all` -> every device (or one CPU worker if none); `0,2`
    -> the devices of those indices (every MIG instance of a split GPU)."""
    requested = requested.strip().lower()
    if requested in ("none", "cpu"):
        return [None]
    if requested == "all":
        return list(available) or [None]
    try:
        wanted = [str(int(part)) for part in requested.split(",") if part.strip()]
    except ValueError:
        raise LaunchError(f"--gpus takes 'all', 'none' or indices like '0,1', not {requested!r}") from None
    if not available:
        raise LaunchError(f"--gpus {requested}: this machine has no CUDA GPU (nvidia-smi finds none); use --gpus none")
    indices = sorted({device.index for device in available}, key=int)
    missing = [int(i) for i in wanted if i not in indices]
    if missing:
        raise LaunchError(f"--gpus {requested}: no GPU {missing} here; this machine has {[int(i) for i in indices]}")
    return [device for i in dict.fromkeys(wanted) for device in available if device.index == i]


def worker_commands(devices: list[Device | None], models: list[str], base_env: dict[str, str] | None = None,
                    per_device: int = 1) -> list[WorkerCommand]:
    """`per_device` workers on each device, each with a node name of its own."""
    if per_device < 1:
        raise LaunchError(f"--per-gpu takes a number of workers of at least 1, not {per_device}")
    host = socket.gethostname()
    base_env = dict(os.environ if base_env is None else base_env)
    threads = str(thread_share(len(devices) * per_device))
    commands = []
    for device, copy in product(devices, range(per_device)):
        stem = device.name if device is not None else "cpu"
        name = f"{stem}-{copy}@{host}" if per_device > 1 else f"{stem}@{host}"
        env = dict(base_env, PYTHONUNBUFFERED="1")
        env.setdefault("GENQ_TORCH_THREADS", threads)
        if device is None:
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env["CUDA_VISIBLE_DEVICES"] = device.pin
            env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            if "PYTORCH_ALLOC_CONF" not in env:  # torch's newer name for the same setting
                env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        argv = [sys.executable, "-m", "worker.main", "--hostname", name]
        if models:
            argv += ["--models", ",".join(models)]
        commands.append(WorkerCommand(name, argv, env))
    return commands


def run_workers(commands: list[WorkerCommand]) -> int:
    """Start every worker, forward SIGINT/SIGTERM to them, and wait. If one dies, stop
    the rest. Exit 0 when asked to stop and every worker stopped (cleanly, or by the
    forwarded signal); 1 when a worker died on its own."""
    children = [subprocess.Popen(c.argv, env=c.env, preexec_fn=dies_with_this_process()) for c in commands]
    asked_to_stop: list[int] = []

    def forward(signum, _frame):
        asked_to_stop.append(signum)
        stop_all(signum)

    def stop_all(signum):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    stop_all(signal.SIGTERM)
    codes = [child.wait() for child in children]
    clean = {0, -signal.SIGTERM, -signal.SIGINT}
    return 0 if asked_to_stop and all(code in clean for code in codes) else 1
