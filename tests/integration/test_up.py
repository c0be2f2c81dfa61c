"""`genq up` end to end: a real embedded stack in a temporary data directory, driven by
the command-line client, stopped with SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import psutil
import pytest
import redis
from PIL import Image

from tests.helpers.processes import free_port, wait_for

pytestmark = pytest.mark.integration


class UpProcess:
    """`genq up` with its output collected, and every process it ever started tracked."""

    def __init__(self, data_dir, models_file, port, **env):
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
        environment.update(GENQ_DATA_DIR=str(data_dir), GENQ_MODELS_FILE=str(models_file), GENQ_WEB_PROCESSES="1",
                           GENQ_RECONCILE_INTERVAL_SECONDS="1", **env)
        self.env = environment
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-m", "genq", "up", "--port", str(port), "--gpus", "none"],
                                        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.descendants: dict[int, psutil.Process] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def track_descendants(self) -> None:
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait_up(self, timeout=120):
        wait_for(lambda: "genq is up" in self.output() or self.process.poll() is not None, timeout, what="genq up")
        assert "genq is up" in self.output(), self.output()[-4000:]
        self.track_descendants()

    def genq(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "genq", *args], env=dict(self.env, GENQ_URL=self.url),
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> int:
        self.track_descendants()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def leftovers(self) -> list[psutil.Process]:
        return [p for p in self.descendants.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def up(tmp_path, models_file):
    process = UpProcess(tmp_path / "var", models_file, free_port())
    yield process
    if process.process.poll() is None:
        process.stop()
    for leftover in process.leftovers():
        leftover.kill()


def test_genq_up_serves_the_cli_and_stops_cleanly(up, tmp_path):
    up.wait_up()
    assert "self-check: tiny-text answered" in up.output()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(20)) + "\n")
    submitted = up.genq("submit", "--model", "tiny-text", "--prompts-file", str(prompts), "--param", "seed=3",
                        "--param", "do_sample=true", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert "20/20" in submitted.stderr and "items/s" in submitted.stderr and "ETA" in submitted.stderr

    results = up.genq("results", job_id, "--out", str(tmp_path / "texts"))
    assert results.returncode == 0, results.stderr
    records = [json.loads(line) for line in (tmp_path / "texts" / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(20))
    assert all(r["state"] == "succeeded" and isinstance(r["text"], str) for r in records)
    assert [r["seed"] for r in records] == list(range(3, 23))

    images = up.genq("submit", "--model", "tiny-sd", "--prompt", "a cat", "--prompt", "a dog",
                     "--param", "width=48", "--param", "height=32", "--wait")
    assert images.returncode == 0, images.stderr
    assert up.genq("results", images.stdout.strip(), "--out", str(tmp_path / "images")).returncode == 0
    for index in (0, 1):
        assert Image.open(tmp_path / "images" / f"{index:05d}.png").size == (48, 32)

    status = up.genq("status", job_id)
    assert "succeeded" in status.stdout and "100%" in status.stdout
    assert job_id in up.genq("jobs").stdout
    bad = up.genq("submit", "--model", "nope", "--prompt", "x")
    assert bad.returncode != 0 and "unknown model" in bad.stderr

    assert up.stop() == 0
    wait_for(lambda: not up.leftovers(), 30, what="every child of genq up to exit")
    for name in ("redis", "migrate", "worker", "web", "reconciler"):
        assert (tmp_path / "var" / "logs" / f"{name}.log").exists()


def test_a_second_genq_up_refuses_to_start(up, models_file):
    up.wait_up()
    second = subprocess.run([sys.executable, "-m", "genq", "up", "--port", str(free_port())], env=up.env,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "already running" in second.stderr


def test_the_embedded_redis_is_private_and_keeps_an_append_only_file(up, tmp_path):
    up.wait_up()
    redis_url = json.loads((tmp_path / "var" / "genq-up.json").read_text())["redis"]
    client = redis.Redis.from_url(redis_url)
    assert client.config_get("dir")["dir"] == str(tmp_path / "var" / "redis")
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert redis_url != "redis://127.0.0.1:6379/0"


def test_with_genq_redis_url_set_it_starts_no_redis(tmp_path, models_file, redis_server):
    up = UpProcess(tmp_path / "var", models_file, free_port(), GENQ_REDIS_URL=redis_server.url)
    try:
        up.wait_up()
        assert "starting none" in up.output()
        names = {p.name() for p in up.descendants.values() if p.is_running()}
        assert "redis-server" not in names
        assert not (tmp_path / "var" / "redis").exists()
    finally:
        assert up.stop() == 0
