"""Which lease holders of this worker are gone (worker.predecessors)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from worker.predecessors import is_gone


def test_a_process_that_ended_is_gone_and_a_running_one_is_not():
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(ended.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert is_gone(str(ended.pid))  # not reaped yet: a zombie has ended all the same
        ended.wait()
        assert is_gone(str(ended.pid))
        assert not is_gone(str(running.pid))
    finally:
        running.kill()
        running.wait()


def test_this_process_and_what_is_not_a_pid_are_never_gone():
    assert not is_gone(str(os.getpid()))
    assert not is_gone("abc") and not is_gone("") and not is_gone("-1")
