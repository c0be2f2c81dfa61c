"""GPU pinning: the launcher's choice of GPUs, and the environment and arguments of the
worker processes it really starts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from genq.devstack import wait_for
from worker.launcher import LaunchError, choose_gpus, worker_commands


def test_choose_gpus():
    assert choose_gpus("none", [0, 1]) == [None]
    assert choose_gpus("all", [0, 1]) == [0, 1]
    assert choose_gpus("all", []) == [None]
    assert choose_gpus("1", [0, 1]) == [1]
    with pytest.raises(LaunchError, match="no CUDA GPU"):
        choose_gpus("0", [])
    with pytest.raises(LaunchError, match="no GPU \\[3\\]"):
        choose_gpus("0,3", [0, 1])
    with pytest.raises(LaunchError, match="indices"):
        choose_gpus("first", [0])


def test_one_command_per_gpu_with_its_device_and_node_name():
    commands = worker_commands([0, 1], ["a", "b"], base_env={"PATH": "/bin"})
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in commands] == ["0", "1"]
    assert [c.name.split("@")[0] for c in commands] == ["gpu0", "gpu1"]
    for command in commands:
        assert command.argv[1:4] == ["-m", "worker.main", "--hostname"]
        assert command.argv[-2:] == ["--models", "a,b"]
    cpu = worker_commands([None], [], base_env={})[0]
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == "" and cpu.name.startswith("cpu@")


def test_gpus_zero_without_cuda_fails_at_once(tmp_path):
    env = dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin")  # no nvidia-smi here
    result = subprocess.run([sys.executable, "-m", "genq", "worker", "--gpus", "0"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "no CUDA GPU" in result.stderr


def test_launched_workers_are_pinned_one_per_gpu(tmp_path, settings):
    """A fake `nvidia-smi` reports two GPUs; the launcher starts two real worker processes,
    each with its own CUDA_VISIBLE_DEVICES and node name, and stops both on SIGTERM."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-a)'\necho 'GPU 1: Fake (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", GENQ_DATABASE_URL=settings.database_url,
               GENQ_REDIS_URL=settings.redis_url, GENQ_MODELS_FILE=str(settings.models_file))
    launcher = subprocess.Popen([sys.executable, "-m", "genq", "worker", "--gpus", "all", "--models", "tiny-text"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        parent = psutil.Process(launcher.pid)
        workers = wait_for(lambda: _worker_mains(parent) if len(_worker_mains(parent)) == 2 else None, 60)
        pinned = sorted((w.environ()["CUDA_VISIBLE_DEVICES"], w.cmdline()[w.cmdline().index("--hostname") + 1]) for w in workers)
        assert [gpu for gpu, _ in pinned] == ["0", "1"]
        assert [name.split("@")[0] for _, name in pinned] == ["gpu0", "gpu1"]
        assert all("--models" in w.cmdline() and "tiny-text" in w.cmdline() for w in workers)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
        wait_for(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 30)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


def _worker_mains(parent: psutil.Process) -> list[psutil.Process]:
    return [c for c in parent.children() if "worker.main" in " ".join(c.cmdline())]
