"""GPU discovery and pinning: what a fake `nvidia-smi` (or a scheduler's
CUDA_VISIBLE_DEVICES) makes the launcher start, the environment of the worker processes
it really starts, and a pinned worker that cannot use CUDA refusing to start."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import psutil
import pytest

from genq.devstack import wait_for
from worker.launcher import (
    Device,
    LaunchError,
    choose_gpus,
    devices_from_listing,
    discover_devices,
    worker_commands,
)

TWO_GPUS = """GPU 0: NVIDIA H200 (UUID: GPU-aaaa1111-0000-0000-0000-000000000000)
GPU 1: NVIDIA H200 (UUID: GPU-bbbb2222-0000-0000-0000-000000000000)
"""
MIG_AND_WHOLE = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa1111-0000-0000-0000-000000000000)
  MIG 3g.20gb     Device  0: (UUID: MIG-1111aaaa-0000-0000-0000-000000000000)
  MIG 3g.20gb     Device  1: (UUID: MIG-2222bbbb-0000-0000-0000-000000000000)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb2222-0000-0000-0000-000000000000)
"""
DRIVER_GONE = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


def fake_nvidia_smi(folder, listing: str = TWO_GPUS, exit_code: int = 0, stderr: str = ""):
    """A `nvidia-smi` script that prints `listing` for `-L` and exits with `exit_code`."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}EOF\necho {shlex.quote(stderr)} >&2\nexit {exit_code}\n")
    script.chmod(0o755)
    return folder


@pytest.fixture
def no_preset(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_choose_gpus():
    gpus = [Device("gpu0", "GPU-a", "0"), Device("gpu1", "GPU-b", "1")]
    assert choose_gpus("none", gpus) == [None]
    assert choose_gpus("all", gpus) == gpus
    assert choose_gpus("all", []) == [None]
    assert choose_gpus("1", gpus) == [gpus[1]]
    with pytest.raises(LaunchError, match="no CUDA GPU"):
        choose_gpus("0", [])
    with pytest.raises(LaunchError, match="no GPU \\[3\\]"):
        choose_gpus("0,3", gpus)
    with pytest.raises(LaunchError, match="indices"):
        choose_gpus("first", gpus)


def test_gpus_are_found_by_a_real_nvidia_smi_call_and_pinned_by_uuid(tmp_path, monkeypatch, no_preset):
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin')}:{os.environ['PATH']}")
    devices = discover_devices()
    assert [(d.name, d.pin, d.index) for d in devices] == [
        ("gpu0", "GPU-aaaa1111-0000-0000-0000-000000000000", "0"),
        ("gpu1", "GPU-bbbb2222-0000-0000-0000-000000000000", "1"),
    ]


def test_each_mig_instance_gets_a_worker(tmp_path, monkeypatch, no_preset):
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', MIG_AND_WHOLE)}:{os.environ['PATH']}")
    devices = discover_devices()
    assert [(d.name, d.pin) for d in devices] == [
        ("gpu0-mig0", "MIG-1111aaaa-0000-0000-0000-000000000000"),
        ("gpu0-mig1", "MIG-2222bbbb-0000-0000-0000-000000000000"),
        ("gpu1", "GPU-bbbb2222-0000-0000-0000-000000000000"),
    ]
    assert [d.pin for d in choose_gpus("0", devices)] == [devices[0].pin, devices[1].pin]  # a split GPU: all of it
    assert devices_from_listing("GPU 0: Old driver\nGPU 1: Old driver\n")[1].pin == "1"  # no UUID: by index


def test_a_preset_cuda_visible_devices_is_respected_and_split(tmp_path, monkeypatch):
    """A scheduler's allocation wins over nvidia-smi, whatever form its entries take."""
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', exit_code=9)}:{os.environ['PATH']}")  # unused
    env = {"CUDA_VISIBLE_DEVICES": "3,GPU-cccc3333-0000,MIG-dddd4444-0000"}
    devices = discover_devices(env)
    assert [d.pin for d in devices] == ["3", "GPU-cccc3333-0000", "MIG-dddd4444-0000"]
    assert [d.name for d in devices] == ["gpu3", "gpu-cccc3333", "mig-dddd4444"]
    assert [d.pin for d in choose_gpus("1", devices)] == ["GPU-cccc3333-0000"]  # by position, as CUDA counts
    commands = worker_commands(choose_gpus("all", devices), [], base_env=env)
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in commands] == ["3", "GPU-cccc3333-0000", "MIG-dddd4444-0000"]
    assert discover_devices({"CUDA_VISIBLE_DEVICES": ""}) == [] and discover_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_gpu_children_get_pci_order_and_expandable_segments_unless_already_set():
    gpu = Device("gpu0", "GPU-a", "0")
    [child] = worker_commands([gpu], [], base_env={"PATH": "/bin"})
    assert child.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert child.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    [child] = worker_commands([gpu], [], base_env={"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128",
                                                   "CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    assert child.env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128" and child.env["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    [child] = worker_commands([gpu], [], base_env={"PYTORCH_ALLOC_CONF": "expandable_segments:False"})
    assert "PYTORCH_CUDA_ALLOC_CONF" not in child.env
    [cpu] = worker_commands([None], [], base_env={})
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == "" and "PYTORCH_CUDA_ALLOC_CONF" not in cpu.env


def test_one_command_per_gpu_with_its_device_and_node_name():
    commands = worker_commands([Device("gpu0", "GPU-a", "0"), Device("gpu1", "GPU-b", "1")], ["a", "b"],
                               base_env={"PATH": "/bin"})
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in commands] == ["GPU-a", "GPU-b"]
    assert [c.name.split("@")[0] for c in commands] == ["gpu0", "gpu1"]
    for command in commands:
        assert command.argv[1:4] == ["-m", "worker.main", "--hostname"]
        assert command.argv[-2:] == ["--models", "a,b"]
    cpu = worker_commands([None], [], base_env={})[0]
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == "" and cpu.name.startswith("cpu@")


def test_per_gpu_starts_several_workers_on_each_device_with_names_of_their_own(monkeypatch):
    monkeypatch.setattr("worker.device.host_cores", lambda: 16)
    gpus = [Device("gpu0", "GPU-a", "0"), Device("gpu1", "GPU-b", "1")]
    commands = worker_commands(gpus, [], base_env={"PATH": "/bin"}, per_device=2)
    assert [(c.name.split("@")[0], c.env["CUDA_VISIBLE_DEVICES"]) for c in commands] == [
        ("gpu0-0", "GPU-a"), ("gpu0-1", "GPU-a"), ("gpu1-0", "GPU-b"), ("gpu1-1", "GPU-b")]
    assert {c.env["GENQ_TORCH_THREADS"] for c in commands} == {"4"}  # 16 cores over 4 workers
    assert [c.argv[c.argv.index("--hostname") + 1] for c in commands] == [c.name for c in commands]
    cpus = worker_commands([None], [], base_env={}, per_device=3)
    assert [c.name.split("@")[0] for c in cpus] == ["cpu-0", "cpu-1", "cpu-2"]
    assert {c.env["CUDA_VISIBLE_DEVICES"] for c in cpus} == {""}
    with pytest.raises(LaunchError, match="at least 1"):
        worker_commands(gpus, [], base_env={}, per_device=0)


def test_genq_worker_per_gpu_starts_that_many_workers_per_gpu(tmp_path):
    one_gpu = "GPU 0: NVIDIA H200 (UUID: GPU-aaaa1111-0000-0000-0000-000000000000)\n"
    result = _genq_worker("0", f"{fake_nvidia_smi(tmp_path / 'bin', one_gpu)}:/usr/bin:/bin", "--per-gpu", "2")
    started = [line for line in result.stdout.splitlines() if line.startswith("starting worker")]
    assert [line.split()[2].split("@")[0] for line in started] == ["gpu0-0", "gpu0-1"]
    assert all("GPU-aaaa1111-0000-0000-0000-000000000000" in line for line in started)
    assert result.returncode != 0  # this CPU-only torch: the pinned workers refuse to start
    refused = _genq_worker("none", "/usr/bin:/bin", "--per-gpu", "0")
    assert refused.returncode == 2 and "--per-gpu" in refused.stderr


def _genq_worker(gpus: str, path: str, *args: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.run([sys.executable, "-m", "genq", "worker", "--gpus", gpus, *args],
                          env=dict(environment, PATH=path, **env), capture_output=True, text=True, timeout=120)


def test_gpus_zero_without_cuda_fails_at_once(tmp_path):
    result = _genq_worker("0", f"{tmp_path}:/usr/bin:/bin")  # no nvidia-smi here
    assert result.returncode != 0 and "no CUDA GPU" in result.stderr


def test_an_nvidia_smi_that_fails_stops_the_launcher_instead_of_a_cpu_worker(tmp_path):
    fake = fake_nvidia_smi(tmp_path / "bin", listing="", exit_code=9, stderr=DRIVER_GONE)
    result = _genq_worker("all", f"{fake}:/usr/bin:/bin")
    assert result.returncode != 0
    assert "nvidia-smi is installed but failed (exit 9)" in result.stderr and DRIVER_GONE in result.stderr
    assert "starting worker" not in result.stdout  # no CPU worker was started


def test_a_worker_pinned_to_a_gpu_refuses_to_start_on_a_torch_without_cuda():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="GPU-aaaa1111")
    result = subprocess.run([sys.executable, "-m", "worker.main", "--hostname", "gpu0@test"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "worker gpu0@test: CUDA_VISIBLE_DEVICES='GPU-aaaa1111' pins this worker to a GPU" in result.stderr
    assert "built without CUDA" in result.stderr and "--gpus none" in result.stderr


def test_launched_workers_are_pinned_one_per_gpu_and_leave_when_cuda_is_missing(tmp_path):
    """A fake `nvidia-smi` reports two GPUs; the launcher starts two real worker processes,
    each pinned by UUID with its node name; on this CPU-only torch each exits with the
    reason, and so does the launcher, instead of two CPU workers taking GPU work."""
    fake = fake_nvidia_smi(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{fake}:{env['PATH']}"
    launcher = subprocess.Popen([sys.executable, "-m", "genq", "worker", "--gpus", "all", "--models", "tiny-text"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        parent = psutil.Process(launcher.pid)
        workers = wait_for(lambda: _worker_mains(parent) if len(_worker_mains(parent)) == 2 else None, 60, interval=0.02)
        pinned = sorted((w.environ()["CUDA_VISIBLE_DEVICES"], w.environ()["CUDA_DEVICE_ORDER"],
                         w.cmdline()[w.cmdline().index("--hostname") + 1].split("@")[0]) for w in workers)
        assert pinned == [("GPU-aaaa1111-0000-0000-0000-000000000000", "PCI_BUS_ID", "gpu0"),
                          ("GPU-bbbb2222-0000-0000-0000-000000000000", "PCI_BUS_ID", "gpu1")]
        assert all("--models" in w.cmdline() and "tiny-text" in w.cmdline() for w in workers)
        output, _ = launcher.communicate(timeout=120)
        assert launcher.returncode == 1
        assert "pins this worker to a GPU, but torch" in output and "built without CUDA" in output
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


def _worker_mains(parent: psutil.Process) -> list[psutil.Process]:
    try:
        return [c for c in parent.children() if "worker.main" in " ".join(c.cmdline())]
    except psutil.NoSuchProcess:
        return []
