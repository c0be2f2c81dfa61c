"""The supervisor's restart policy with real short-lived children."""
from __future__ import annotations

import json
import sys
import time

from genq.devstack import wait_for
from genq.supervisor import Supervisor, backoff_seconds


def test_backoff_doubles_from_one_second_to_a_minute():
    assert [backoff_seconds(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_child_that_keeps_dying_is_restarted_with_growing_delays(tmp_path):
    lines: list[str] = []
    supervisor = Supervisor(tmp_path / "logs", state_file=tmp_path / "services.json", echo=lines.append)
    child = supervisor.start("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], {})
    restarts_at = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and len(restarts_at) < 3:
        before = child.restarts
        supervisor.supervise()
        if child.restarts != before:
            restarts_at.append(time.monotonic())
        time.sleep(0.05)
    supervisor.stop_all()
    assert len(restarts_at) == 3, lines
    gaps = [b - a for a, b in zip(restarts_at, restarts_at[1:])]
    assert 1.9 < gaps[0] < 3.0 and 3.9 < gaps[1] < 5.0, gaps  # 2 s, then 4 s (plus the child's own run)
    assert "flaky | exited with exit code 3 after" in "\n".join(lines)
    assert not (tmp_path / "services.json").exists()  # removed on a clean stop


def test_the_state_file_says_which_service_is_down_and_why(tmp_path):
    supervisor = Supervisor(tmp_path / "logs", state_file=tmp_path / "services.json", echo=lambda line: None)
    supervisor.start("steady", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    supervisor.start("dies", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], {})
    try:
        wait_for(lambda: supervisor.supervise() or json.loads((tmp_path / "services.json").read_text())
                 ["services"]["dies"]["state"] == "restarting", 10)
        services = json.loads((tmp_path / "services.json").read_text())["services"]
        assert services["steady"]["state"] == "running" and services["steady"]["started"] > 0
        assert services["dies"]["last_exit"] == "signal SIGKILL" and services["dies"]["restart_at"] <= time.time() + 1
    finally:
        supervisor.stop_all()
