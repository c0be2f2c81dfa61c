"""`genq worker --gpus ...`: one worker process per GPU, each pinned before torch loads.

The launcher itself never imports torch: it finds GPUs with `nvidia-smi`, and each
child gets `CUDA_VISIBLE_DEVICES=<its gpu>` in its environment from the start.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from shared.processes import dies_with_this_process


class LaunchError(Exception):
    """The requested GPUs cannot be served on this machine."""


@dataclass(frozen=True)
class WorkerCommand:
    name: str
    argv: list[str]
    env: dict[str, str]


def visible_gpus() -> list[int]:
    """GPU indices this machine has, from `nvidia-smi -L` (empty when there is none)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [i for i, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def choose_gpus(requested: str, available: list[int]) -> list[int | None]:
    """`none` -> one CPU worker; `all` -> every GPU (or one CPU worker if none); `0,2` -> those."""
    requested = requested.strip().lower()
    if requested in ("none", "cpu"):
        return [None]
    if requested == "all":
        return list(available) or [None]
    try:
        wanted = [int(part) for part in requested.split(",") if part.strip()]
    except ValueError:
        raise LaunchError(f"--gpus takes 'all', 'none' or indices like '0,1', not {requested!r}") from None
    if not available:
        raise LaunchError(f"--gpus {requested}: this machine has no CUDA GPU (nvidia-smi finds none); use --gpus none")
    missing = [g for g in wanted if g not in available]
    if missing:
        raise LaunchError(f"--gpus {requested}: no GPU {missing} here; this machine has {available}")
    return wanted


def worker_commands(gpus: list[int | None], models: list[str], base_env: dict[str, str] | None = None) -> list[WorkerCommand]:
    host = socket.gethostname()
    base_env = dict(os.environ if base_env is None else base_env)
    commands = []
    for gpu in gpus:
        name = f"gpu{gpu}@{host}" if gpu is not None else f"cpu@{host}"
        env = dict(base_env, CUDA_VISIBLE_DEVICES="" if gpu is None else str(gpu), PYTHONUNBUFFERED="1")
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
