"""`genq up` is a supervisor: a service that dies comes back (with backoff) while the
rest keeps serving, and nothing of an instance outlives it, even when it is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import psutil
import pytest
import redis
import requests

from genq.devstack import free_port, wait_for
from tests.helpers.ledger import count_result_writes, items_written_more_than_once
from tests.helpers.up import UpProcess

pytestmark = pytest.mark.integration

ITEMS = 400


class Poller:
    """GET the job's status every 0.1 s from a thread; count what did not answer."""

    def __init__(self, up: UpProcess, job_id: str):
        self.up, self.job_id = up, job_id
        self.answered = self.failed = 0
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while self.running:
            try:
                self.up.get(f"/v1/jobs/{self.job_id}").raise_for_status()
                self.answered += 1
            except requests.RequestException:
                self.failed += 1
            time.sleep(0.1)

    def stop(self):
        self.running = False
        self.thread.join(5)


def readiness(up: UpProcess) -> dict:
    try:
        return requests.get(up.url + "/readyz", timeout=5).json()["checks"]
    except (requests.RequestException, ValueError):
        return {}


def kill_and_see_it_come_back(up: UpProcess, name: str, whole_group: bool = True) -> str:
    """SIGKILL a service; return what /readyz said while it was down (for the worker and
    the reconciler: Redis is back before a probe's own Redis timeout), then wait until
    every check is ok again."""
    pid = up.services()[name]["pid"]
    os.killpg(pid, signal.SIGKILL) if whole_group else os.kill(pid, signal.SIGKILL)
    seen = ""
    if name in ("worker", "reconciler"):
        seen = wait_for(lambda: readiness(up).get(name, "ok") if readiness(up).get(name, "ok") != "ok" else None,
                        15, interval=0.05, what=f"/readyz to name {name} as down")
    wait_for(lambda: up.services()[name]["pid"] not in (None, pid), 30, what=f"{name} to restart")
    wait_for(lambda: readiness(up) and all(v == "ok" for v in readiness(up).values()), 60, what="every check ok")
    return seen


def test_services_killed_mid_job_come_back_and_the_job_completes_once(tmp_path, fault_models_file, journal):
    up = UpProcess(tmp_path / "var", fault_models_file, free_port(), GENQ_LEASE_SECONDS="3")
    try:
        up.wait_up()
        count_result_writes(up.database_url)
        prompts = [("slow " if i % 4 == 0 else "ok ") + str(i) for i in range(ITEMS)]
        job_id = up.post("/v1/jobs", json={"model": "fault", "prompts": prompts}).json()["id"]
        wait_for(lambda: up.get(f"/v1/jobs/{job_id}").json()["counts"]["succeeded"] >= 20, 60, what="the job to run")
        poller = Poller(up, job_id)
        redis_client = redis.Redis.from_url(json.loads((up.data_dir / "genq-up.json").read_text())["redis"])

        worker_down = kill_and_see_it_come_back(up, "worker")
        reconciler_down = kill_and_see_it_come_back(up, "reconciler")
        kill_and_see_it_come_back(up, "redis")
        assert redis_client.ping()  # the same port, its own data directory
        poller.stop()
        kill_and_see_it_come_back(up, "web", whole_group=False)  # gunicorn's master alone

        job = wait_for(lambda: (lambda j: j if j["state"] in ("succeeded", "failed") else None)(
            up.get(f"/v1/jobs/{job_id}").json()), 180, what="the job to finish")
    finally:
        code = up.stop()
    output = up.output()
    assert code == 0, output[-3000:]
    assert worker_down.startswith("down: exited with signal SIGKILL"), worker_down
    assert reconciler_down.startswith("down: exited with signal SIGKILL"), reconciler_down
    for name in ("worker", "reconciler", "redis", "web"):
        assert f"{name} | exited with signal SIGKILL" in output and f"{name} | restarted (pid" in output, name
    assert poller.failed == 0 and poller.answered > 20, (poller.answered, poller.failed)
    assert job["state"] == "succeeded" and job["counts"]["succeeded"] == ITEMS, job
    assert items_written_more_than_once(up.database_url) == 0
    print(f"\njob {job['state']}: {job['counts']}; status polls answered {poller.answered}, failed {poller.failed} "
          f"while worker, reconciler and redis were killed; /readyz said worker {worker_down!r}")


def test_killing_genq_up_takes_every_child_with_it(tmp_path, models_file):
    port = free_port()
    up = UpProcess(tmp_path / "var", models_file, port)
    up.wait_up()
    children = list(up.descendants.values())
    assert "redis-server" in {c.name() for c in children} and len(children) >= 6  # + reconciler, worker x3, web x2
    up.process.send_signal(signal.SIGKILL)
    up.process.wait(10)
    started = time.monotonic()
    wait_for(lambda: not up.leftovers(), 5, interval=0.1, what="every child of the killed genq up to die")
    print(f"{len(children)} processes gone {time.monotonic() - started:.1f} s after SIGKILL")

    again = UpProcess(tmp_path / "var", models_file, port)  # the same data directory and port
    try:
        again.wait_up()
    finally:
        assert again.stop() == 0


def test_a_new_genq_up_stops_what_an_earlier_one_left_behind(tmp_path, models_file):
    """Where the kernel could not kill them (another OS, or processes of an older genq),
    the next `genq up` finds the earlier instance's services in its state file."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    orphan = subprocess.Popen(["sleep", "600"], start_new_session=True)
    started = psutil.Process(orphan.pid).create_time()
    state = {"supervisor_pid": 999999, "services": {"reconciler": {"state": "running", "pid": orphan.pid,
                                                                    "started": started, "restarts": 0}}}
    (data_dir / "services.json").write_text(json.dumps(state))
    up = UpProcess(data_dir, models_file, free_port())
    try:
        up.wait_up()
        assert orphan.wait(5) == -signal.SIGKILL
        assert f"left reconciler (pid {orphan.pid}) running; stopped them" in up.output()
    finally:
        if orphan.poll() is None:
            orphan.kill()
        assert up.stop() == 0
