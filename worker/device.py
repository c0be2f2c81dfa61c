"""The device a worker process is pinned to: is it there at start, and is it still usable.

A worker given a GPU (`CUDA_VISIBLE_DEVICES` set by the launcher) checks before it
takes any work that torch can use CUDA and sees exactly one device; a CPU-only torch in
a GPU image, a missing driver or a pin that shows several devices stops it with a
clear message and a non-zero exit, instead of a worker that quietly runs float16
models on the CPU. The check runs in a short-lived subprocess, because the worker's
main process forks its pool and must never initialise CUDA itself.

A CUDA error other than out-of-memory (an illegal memory access, a device-side assert,
an ECC error, a launch failure) is sticky: every later call in the same CUDA context
fails too. The micro-batch raises `DeviceBroken`; the slice is given back (its items
keep the attempt they spent and go back to pending) and the pool process exits with
`EXIT_DEVICE_BROKEN`, so Celery replaces it with a fresh process and a fresh context.

Before a model loads, `configure_torch` sets the process's torch threads (by default
the launcher gives each worker an equal share of the host's cores, `thread_share`) and,
on a GPU, TensorFloat-32 matmuls.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)

EXIT_DEVICE_BROKEN = 70
EXIT_NO_DEVICE = 3

# Lower-case fragments of the messages of CUDA errors that poison the process's context,
# for those torch raises as a plain RuntimeError rather than `torch.AcceleratorError`:
# cuBLAS checks ("CUDA error: CUBLAS_STATUS_..."), cuDNN's, NVML's internal asserts, and
# kernels launched outside torch's checks ("Triton Error [CUDA]: an illegal memory access ...").
_STICKY_MARKERS = (
    "cuda error",
    "illegal memory access",
    "device-side assert",
    "ecc error",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "nvml",
)


class DeviceBroken(Exception):
    """The process's GPU (or its CUDA context) is unusable: the process must be replaced."""


def is_sticky_device_error(exc: BaseException) -> bool:
    """A CUDA error that leaves the context unusable (out-of-memory is not one: check it first)."""
    torch = sys.modules.get("torch")
    accelerator_error = getattr(torch, "AcceleratorError", None) if torch is not None else None
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    message = str(exc).lower()
    return any(marker in message for marker in _STICKY_MARKERS)


def exit_if_device_broken(sender=None, exception=None, **_kwargs) -> None:
    """Celery `task_failure` handler: a task that ended with `DeviceBroken` (its slice was
    already given back) ends the pool process, which Celery then replaces."""
    if isinstance(exception, DeviceBroken):
        log.critical("%s; exiting with status %d", exception, EXIT_DEVICE_BROKEN)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_DEVICE_BROKEN)


def host_cores() -> int:
    """The CPU cores this process may run on (its affinity: a cgroup or Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_share(workers: int, cores: int | None = None) -> int:
    """Torch threads for one of `workers` worker processes on this host: an equal share
    of the cores, at least 1. Each process taking all of them (torch's default) has
    eight GPU workers' host-side work fight over the same cores."""
    return max(1, (host_cores() if cores is None else cores) // max(1, workers))


def configure_torch(device: str, threads: int = 0) -> None:
    """Set up torch in a worker process before a model loads: `threads` CPU threads (0:
    torch's own choice), and on CUDA TensorFloat-32 for float32 matrix multiplications
    and convolutions (tensor cores; about 10 bits of mantissa, float32 range), which
    torch leaves off for matmuls by default. Only the new API (torch >= 2.9) or only
    the old one is used: torch refuses to report a precision set through both."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if not str(device).startswith("cuda"):
        return
    if hasattr(torch.backends, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def pinned_device_problem(timeout: float = 300) -> str | None:
    """Why this process cannot use the GPU it was pinned to, or None when it can: asked
    of a subprocess (`python -m worker.device`), so this process never touches CUDA."""
    try:
        done = subprocess.run([sys.executable, "-m", "worker.device"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"checking the GPU took more than {timeout:g}s (is the driver hung?)"
    if done.returncode == 0:
        return None
    if done.returncode == EXIT_NO_DEVICE and done.stdout.strip():
        return done.stdout.strip()
    last_lines = done.stderr.strip().splitlines()[-1:]  # torch failed to import, or the driver crashed it
    return f"the GPU check failed (exit {done.returncode}): {last_lines[0] if last_lines else 'no message'}"


def _check_this_process() -> str | None:
    """Run inside the check subprocess: the problem with this process's CUDA, if any."""
    import torch

    pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    where = f"CUDA_VISIBLE_DEVICES={pinned!r}"
    if torch.version.cuda is None:
        return (f"{where} pins this worker to a GPU, but torch {torch.__version__} is built without CUDA: "
                "install a CUDA build of torch, or start CPU workers with --gpus none")
    if not torch.cuda.is_available():
        return (f"{where} pins this worker to a GPU, but torch {torch.__version__} (CUDA {torch.version.cuda}) "
                "finds no usable device: check the NVIDIA driver and the container's GPU runtime")
    count = torch.cuda.device_count()
    if count != 1:
        return f"{where} should show this worker exactly one device, but torch sees {count}"
    return None


if __name__ == "__main__":
    problem = _check_this_process()
    if problem:
        print(problem)
        sys.exit(EXIT_NO_DEVICE)
