"""`genq up` end to end: a real embedded stack in a temporary data directory, driven by
the command-line client, stopped with SIGTERM."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from PIL import Image

from genq.devstack import free_port, wait_for
from tests.helpers.up import UpProcess

pytestmark = pytest.mark.integration


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
