"""A sticky CUDA error in a slice: the slice is given back (its items keep their attempt
and go back to pending, none fails for good) and the error reaches the task, whose
failure handler ends the process."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.orm import ItemState, JobState
from tests.worker.test_slices import ctx, job_and_items, submit  # noqa: F401  (ctx is a fixture)
from worker.device import EXIT_DEVICE_BROKEN, DeviceBroken
from worker.slices import handle_wakeup


def test_a_sticky_cuda_error_gives_the_slice_back_without_failing_its_items(ctx):  # noqa: F811
    job_id = submit(ctx, ["ok 0", "ok 1", "ok 2", "ok 3", "cuda-error 4", "ok 5"])
    with pytest.raises(DeviceBroken):
        handle_wakeup(ctx, "fault")
    job, items = job_and_items(ctx, job_id)
    assert job.state == JobState.RUNNING
    assert [item.state for item in items] == [ItemState.SUCCEEDED] * 4 + [ItemState.PENDING] * 2
    assert all(item.lease_id is None and item.attempts == 1 for item in items[4:])
    assert ctx.wakeups.sent[-1] == "fault"  # the given-back items wake a worker


def test_the_task_failure_handler_ends_the_process_on_a_broken_device_only():
    code = ("from worker.device import DeviceBroken, exit_if_device_broken as h\n"
            "h(exception=RuntimeError('boom'))\n"
            "h(exception=DeviceBroken('CUDA error: an illegal memory access was encountered'))\n"
            "print('still here')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == EXIT_DEVICE_BROKEN and "still here" not in done.stdout
