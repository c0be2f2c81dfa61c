"""The instruments of bench/gpu_check.py, on the CPU: they must be able to fail.

The memory runner shows a retry made inside the out-of-memory handler (the failed
call's activations still held: every smaller size fails too) and passes the worker's
real micro-batch code; the sticky-error runner breaks a process once; the pinning
check says WRONG for a worker pinned to a GPU this machine does not have."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.gpu_check import check_pinning
from bench.gpu_runners import MemoryRunner, StickyErrorRunner
from worker.batch_sizes import BatchSizes
from worker.batches import run_micro_batch
from worker.device import is_sticky_device_error
from worker.launcher import Device
from worker.memory import is_out_of_memory
from worker.runners.base import ItemInput

ITEMS = [ItemInput(index, "p", index) for index in range(16)]


def memory_runner() -> MemoryRunner:
    runner = MemoryRunner(SimpleNamespace(name="memory", micro_batch_size=16,
                                          options={"item_mb": 1, "budget_mb": 5}), "cpu")
    runner.setup()
    return runner


def test_the_memory_runner_shows_a_retry_made_inside_the_handler():
    runner = memory_runner()
    failures = []
    try:
        runner.predict(ITEMS, {})
    except Exception as exc:  # the old worker retried here, with the failed call's frames alive: all fail
        assert is_out_of_memory(exc)
        for size in (8, 4, 2, 1):
            try:
                runner.predict(ITEMS[:size], {})
            except Exception as again:
                failures.append(is_out_of_memory(again))
    assert failures == [True] * 4
    [report] = runner.predict(ITEMS[:1], {})  # out of the handler, as the worker retries now
    assert json.loads(report.text)["failed_call_alive_at_start"] is False


def test_the_worker_recovers_at_a_smaller_size_with_the_memory_freed():
    runner = memory_runner()
    spec = runner.spec
    results = run_micro_batch(runner, spec, ITEMS, {}, lambda: False, BatchSizes())
    reports = [json.loads(outcome.text) for _, outcome in results]
    assert {report["batch"] for report in reports} == {4}
    assert all(report["above_baseline_at_start"] == 0 for report in reports)
    assert not any(report["failed_call_alive_at_start"] for report in reports)


def test_the_sticky_error_runner_breaks_one_process_only(tmp_path):
    runner = StickyErrorRunner(SimpleNamespace(options={"flag": str(tmp_path / "broke")}), "cpu")
    with pytest.raises(RuntimeError) as broken:
        runner.predict(ITEMS[:2], {})
    assert is_sticky_device_error(broken.value)
    assert len(runner.predict(ITEMS[:2], {})) == 2


def test_the_pinning_check_passes_a_cpu_worker_and_fails_a_missing_gpu():
    cpu, missing = check_pinning([None, Device(name="gpu0", pin="GPU-00000000-0000-0000-0000-000000000000", index="0")])
    assert cpu["ok"] and cpu["sees"] == 0
    assert not missing["ok"] and missing["start_check"] != "passed"
