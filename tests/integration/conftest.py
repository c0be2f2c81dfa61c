"""Fault-test stacks: a Redis of the test's own (so it can be stopped), a fresh database,
a registry with the fault runner, and short leases so recovery is quick."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genq.devstack import RedisServer, Stack
from tests import tiny_models
from tests.helpers.database import BACKENDS, database_url_for, reset_schema

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST_RECOVERY = {
    "lease_seconds": 2,
    "reconcile_interval_seconds": 0.5,
    "cancel_check_seconds": 0.2,
    "slice_max_items": 8,
    "worker_max_models": 4,
}


@pytest.fixture(scope="session")
def fault_models_file(tmp_path_factory, tiny_model_dirs):
    root = tmp_path_factory.mktemp("fault-registry")
    entries = tiny_models.tiny_registry_entries(tiny_model_dirs["text"], tiny_model_dirs["uncond"], tiny_model_dirs["sd"])
    entries["models"]["fault"] = {
        "task": "text-generation",
        "source": str(root),
        "runner": "tests.fault_runner:FaultRunner",
        "micro_batch_size": 4,
        "options": {"journal": str(root / "journal.tsv"), "slow_seconds": 0.3, "oom_above": 2},
    }
    # A slice holds at least one micro-batch: a test that wants one item a slice needs this one
    entries["models"]["fault-one"] = {**entries["models"]["fault"], "micro_batch_size": 1}
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.fixture
def journal(fault_models_file):
    path = fault_models_file.parent / "journal.tsv"
    path.unlink(missing_ok=True)
    return path


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def fault_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def make_stack(tmp_path, backend, fault_redis, fault_models_file, journal):
    """Build a stack with extra settings; web started, workers started by the test."""
    stacks = []

    def build(**settings) -> Stack:
        url = database_url_for(backend, tmp_path)
        reset_schema(url)
        stack = Stack(tmp_path / f"stack{len(stacks)}", url, fault_redis.url, fault_models_file,
                      env={"PYTHONPATH": str(REPO_ROOT)},  # workers import tests.fault_runner
                      **{**FAST_RECOVERY, **settings})
        stack.migrate()
        stack.start_web()
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        stack.stop()
        reset_schema(stack.database_url)
