"""The pieces of bench/scale.py on the CPU: which workers each step starts, the
efficiency it prints, GPU utilisation read from a (fake) nvidia-smi, and one real step
of two CPU workers started by `genq worker --per-gpu 2` on a tiny GPT-2."""
from __future__ import annotations

import os

import pytest

from bench.gpu_check import PARAMS
from bench.harness import running_stack, write_registry
from bench.scale import (
    MODEL,
    Sampler,
    add_efficiency,
    gpu_groups,
    parse_nvidia_smi,
    percent,
    plan_workers,
    run_step,
    step_plan,
    utilisation_of,
)
from genq.devstack import wait_for
from tests.tiny_models import build_tiny_text_model
from worker.launcher import Device

TWO_GPUS = [Device("gpu0", "GPU-a", "0"), Device("gpu1", "GPU-b", "1")]
MIG_AND_WHOLE = [Device("gpu0-mig0", "MIG-x", "0"), Device("gpu0-mig1", "MIG-y", "0"), Device("gpu1", "GPU-b", "1")]
SMI_QUERY = "0, GPU-a, 80\n1, GPU-b, 40\n2, GPU-c, [N/A]\n"


def fake_nvidia_smi(folder, output: str):
    """An `nvidia-smi` that prints `output` whatever it is asked."""
    folder.mkdir()
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def test_steps_place_one_worker_per_gpu_before_a_second():
    groups = gpu_groups(TWO_GPUS)
    plans = [step_plan(groups, 2, step) for step in (1, 2, 3, 4)]
    assert plans == [[("0", 1)], [("0,1", 1)], [("0", 2), ("1", 1)], [("0,1", 2)]]
    assert [plan_workers(groups, plan) for plan in plans] == [1, 2, 3, 4]


def test_cpu_steps_and_mig_instances_count_the_workers_a_launcher_starts():
    cpu = gpu_groups([None])
    assert [step_plan(cpu, 3, step) for step in (1, 3)] == [[("none", 1)], [("none", 3)]]
    mig = gpu_groups(MIG_AND_WHOLE)  # `--gpus 0` starts a worker on each of GPU 0's instances
    assert mig == {"0": 2, "1": 1}
    assert [plan_workers(mig, step_plan(mig, 1, step)) for step in (1, 2)] == [2, 3]


def test_efficiency_is_items_per_s_over_n_times_one_workers():
    steps = [{"workers": 1, "items_per_s": 100.0}, {"workers": 2, "items_per_s": 190.0},
             {"workers": 4, "items_per_s": 200.0}]
    add_efficiency(steps)
    assert [round(s["speedup"], 3) for s in steps] == [1.0, 1.9, 2.0]
    assert [round(s["efficiency"], 3) for s in steps] == [1.0, 0.95, 0.5]


def test_gpu_utilisation_is_read_by_uuid_or_index_and_n_a_without_gpus(tmp_path, monkeypatch):
    reading = parse_nvidia_smi(SMI_QUERY)
    assert reading == {"0": 80.0, "GPU-a": 80.0, "1": 40.0, "GPU-b": 40.0}  # "[N/A]" (MIG) skipped
    assert utilisation_of(Device("gpu1", "GPU-b", "1"), reading) == 40.0
    assert utilisation_of(Device("gpu0-mig0", "MIG-x", "0"), reading) == 80.0  # its GPU's figure
    assert utilisation_of(Device("gpu2", "GPU-c", "2"), reading) is None
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', SMI_QUERY)}:{os.environ['PATH']}")
    with Sampler(TWO_GPUS, interval=0.05) as sampler:
        wait_for(lambda: len(sampler.samples) >= 2, 10, interval=0.01, what="two samples")
    assert sampler.mean() == 60.0  # both GPUs in use: their mean
    with Sampler([], interval=0.05) as cpu_only:
        pass
    assert cpu_only.mean() is None and percent(cpu_only.mean()) == "n/a"


@pytest.mark.integration
def test_a_step_runs_two_cpu_workers_of_one_launcher_on_a_tiny_gpt2(tmp_path):
    model = build_tiny_text_model(tmp_path / "model")
    models_file = write_registry(tmp_path / "models.yaml", {MODEL: {
        "task": "text-generation", "source": str(model), "dtype": "float32", "micro_batch_size": 8}})
    settings = {"items": 48, "slice": 16, "repeats": 1, "threads": 1, "params": {**PARAMS, "max_new_tokens": 4}}
    with running_stack(tmp_path, f"sqlite:///{tmp_path / 'scale.db'}", models_file, worker=False,
                       slice_max_items=16) as stack:
        row = run_step(stack, gpu_groups([None]), [None], step_plan(gpu_groups([None]), 2, 2), settings)
        assert not [name for name in stack.processes if name.startswith("workers")]  # stopped after the step
    assert row["workers"] == 2 and row["launch"] == ["--gpus none --per-gpu 2"]
    assert row["ran_on"] == 2 and row["items"] == 96  # both workers took part in the timed job
    assert row["items_per_s"] > 0 and row["gpu_util"] is None and 0 <= row["cpu_util"] <= 100
