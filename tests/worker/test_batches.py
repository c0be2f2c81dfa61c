"""Micro-batches under out-of-memory and device errors, with the fault runner in process:
memory is let go before a retry, the lowered size is remembered per parameter range and
probed upward again, and a sticky CUDA error ends the slice instead of failing items."""
from __future__ import annotations

import gc

import pytest

from shared.ledger import ClaimedItem
from shared.registry import ModelSpec
from tests.fault_runner import FaultRunner
from worker.batch_sizes import BatchSizes, memory_range
from worker.batches import run_micro_batch
from worker.device import DeviceBroken, is_sticky_device_error
from worker.memory import OutOfMemory


def spec(micro_batch_size=8, **options) -> ModelSpec:
    return ModelSpec(name="fault", task="text-generation", source=".", runner="tests.fault_runner:FaultRunner",
                     micro_batch_size=micro_batch_size, options=options)


def items(prompts: list[str]) -> list[ClaimedItem]:
    return [ClaimedItem(index=i, prompt=p, seed=i, id=i + 1, job_id="job") for i, p in enumerate(prompts)]


@pytest.fixture
def runner_for():
    FaultRunner.held.clear()
    FaultRunner.alive_at_call.clear()

    def make(model: ModelSpec) -> FaultRunner:
        runner = FaultRunner(model)
        runner.setup()
        return runner

    yield make
    FaultRunner.held.clear()
    FaultRunner.alive_at_call.clear()


def never() -> bool:
    return False


def test_the_failed_calls_tensors_are_dead_before_the_retry(runner_for):
    model = spec(micro_batch_size=8, oom_above=2)
    runner = runner_for(model)
    results = run_micro_batch(runner, model, items([f"oom {i}" for i in range(8)]), {}, never, BatchSizes())
    assert [out.text for _, out in results] == [f"ok:oom {i}:{i}" for i in range(8)]
    assert len(FaultRunner.held) == 2  # the calls at 8 and at 4 ran out of memory
    assert FaultRunner.alive_at_call[0] is False
    assert FaultRunner.alive_at_call[1:] == [False] * (len(FaultRunner.alive_at_call) - 1), \
        "a retry ran while the failed call's tensor was still referenced"


def test_one_item_that_does_not_fit_fails_with_out_of_memory_and_nothing_stays_alive(runner_for):
    model = spec(micro_batch_size=4)
    runner = runner_for(model)
    results = run_micro_batch(runner, model, items(["ok a", "oom-always", "ok b"]), {}, never, BatchSizes())
    outcomes = [out for _, out in results]
    assert outcomes[0].text == "ok:ok a:0" and outcomes[2].text == "ok:ok b:2"
    assert isinstance(outcomes[1], OutOfMemory) and str(outcomes[1]).startswith("out_of_memory: one item does not fit")
    gc.collect()
    assert all(ref() is None for ref in FaultRunner.held)
    assert not any(FaultRunner.alive_at_call)


def test_the_lowered_size_holds_for_its_parameter_range_only():
    model, sizes = spec(micro_batch_size=16), BatchSizes(probe_after=3)
    big, small = {"width": 1024, "height": 1024}, {"width": 256, "height": 256}
    assert sizes.ran_out_of_memory(model, big, 16) == 8
    assert sizes.ran_out_of_memory(model, big, 8) == 4
    assert sizes.size(model, big) == 4
    assert sizes.size(model, {"width": 1000, "height": 1000}) == 4  # same range (area rounded up to 2**20)
    assert sizes.size(model, small) == 16
    assert memory_range({"max_new_tokens": 20}) != memory_range({"max_new_tokens": 2000})
    assert memory_range({"max_new_tokens": 20, "temperature": 0.1}) == memory_range({"max_new_tokens": 30})


def test_after_successes_the_size_is_probed_upward_and_a_failed_probe_waits_longer():
    model, sizes, params = spec(micro_batch_size=16), BatchSizes(probe_after=3), {"max_new_tokens": 512}
    sizes.ran_out_of_memory(model, params, 16)  # -> 8
    for _ in range(3):
        sizes.succeeded(model, params, 8)
    assert sizes.size(model, params) == 16  # the probe
    sizes.ran_out_of_memory(model, params, 16)  # the probe does not fit -> 8 again
    assert sizes.size(model, params) == 8
    for _ in range(3):
        sizes.succeeded(model, params, 8)
    assert sizes.size(model, params) == 8  # now it waits for 6
    for _ in range(3):
        sizes.succeeded(model, params, 8)
    assert sizes.size(model, params) == 16
    sizes.succeeded(model, params, 16)
    assert sizes.size(model, params) == 16  # never above the registry's size


def test_run_micro_batch_remembers_and_probes(runner_for):
    model = spec(micro_batch_size=4, oom_above=2)
    runner, sizes = runner_for(model), BatchSizes(probe_after=3)
    run_micro_batch(runner, model, items(["oom 0", "oom 1", "oom 2", "oom 3"]), {}, never, sizes)
    assert sizes.size(model, {}) == 2  # 4 ran out of memory; its halves ran at 2
    assert sizes.size(model, {"max_new_tokens": 8}) == 4  # another range learned nothing
    run_micro_batch(runner, model, items(["ok 0", "ok 1"]), {}, never, sizes)
    assert sizes.size(model, {}) == 4  # three good micro-batches of 2: try 4 again


def test_a_sticky_cuda_error_breaks_the_batch_instead_of_failing_its_items(runner_for):
    model = spec(micro_batch_size=4)
    runner = runner_for(model)
    with pytest.raises(DeviceBroken, match="illegal memory access"):
        run_micro_batch(runner, model, items(["ok 0", "cuda-error 1", "ok 2"]), {}, never, BatchSizes())
    assert len(FaultRunner.alive_at_call) == 1  # no one-by-one reruns on a broken device


def test_sticky_errors_are_told_from_others():
    import torch

    assert is_sticky_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_sticky_device_error(RuntimeError("CUDA error: uncorrectable ECC error encountered"))
    assert is_sticky_device_error(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    assert is_sticky_device_error(RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"))
    assert is_sticky_device_error(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
    assert not is_sticky_device_error(RuntimeError("shape mismatch"))
    assert not is_sticky_device_error(ValueError("CUDA error in a prompt"))
