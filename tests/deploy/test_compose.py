"""The compose files cannot run here (no Docker engine): check their shape, that every
command and file they name exists, that every GENQ_ variable they set is a setting, and
that a deployment made from them runs exactly one reconciler."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from genq.cli import main
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.worker.yml")
GENQ_VARIABLE = re.compile(r"\bGENQ_[A-Z0-9_]+")
ONE_SHOTS = {"migrate", "minio-bucket"}


def load_compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def genq_command_exists(argv: list[str]) -> bool:
    """`genq a b --opt ...`: the subcommand path exists in the CLI and accepts the options."""
    result = CliRunner().invoke(main, argv[1:] + ["--help"])
    return result.exit_code == 0


def test_genq_command_exists_refuses_what_the_cli_lacks():
    assert genq_command_exists(["genq", "worker", "--gpus", "all"])
    assert not genq_command_exists(["genq", "reconciler"])
    assert not genq_command_exists(["genq", "worker", "--gpu", "all"])


def test_services_and_health_checks():
    services = load_compose()["services"]
    assert {"redis", "postgres", "migrate", "web", "reconciler", "worker-gpu0"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["command"] == ["genq", "db", "upgrade"]
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_genq_command_exists(name):
    for service_name, service in load_compose(name)["services"].items():
        command = service.get("command")
        if command and command[0] == "genq":
            assert genq_command_exists(command), f"{name} {service_name}: {command}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_genq_variable_is_a_setting(name):
    """In environment blocks, interpolations and comments alike: a misspelt variable is
    silently ignored by pydantic-settings, so it must be caught here."""
    text = (ROOT / name).read_text()
    named = set(GENQ_VARIABLE.findall(text))
    fields = {f"GENQ_{field.upper()}" for field in Settings.model_fields}
    assert named and named - fields == set()


def test_exactly_one_reconciler_in_a_deployment():
    """One in the main file, none on the worker-only machines (each would be one more)."""
    def reconcilers(name):
        return [s for s, service in load_compose(name)["services"].items()
                if (service.get("command") or [None, None])[:2] == ["genq", "reconcile"]]

    assert reconcilers("docker-compose.yml") == ["reconciler"]
    assert reconcilers("docker-compose.worker.yml") == []
    reconciler = load_compose()["services"]["reconciler"]
    assert reconciler["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_long_running_service_restarts_unless_stopped(name):
    for service_name, service in load_compose(name)["services"].items():
        expected = "no" if service_name in ONE_SHOTS else "unless-stopped"
        assert service.get("restart") == expected, f"{name} {service_name}: restart {service.get('restart')!r}"


def test_one_worker_per_gpu_with_its_device():
    services = load_compose()["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    devices = []
    for service in workers.values():
        reservation = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert reservation["capabilities"] == ["gpu"]
        devices += reservation["device_ids"]
        assert service["command"][:3] == ["genq", "worker", "--gpus"]
    assert sorted(devices) == [str(i) for i in range(len(workers))]


def test_the_s3_option_has_a_local_service_behind_a_profile():
    compose = load_compose()
    services, env = compose["services"], compose["x-genq-env"]
    assert env["GENQ_STORAGE_URL"] == "${GENQ_STORAGE_URL-}"  # local disk unless asked
    assert services["minio"]["profiles"] == ["s3"] and services["minio-bucket"]["profiles"] == ["s3"]
    assert "http://minio:9000" in env["GENQ_S3_ENDPOINT_URL"]
    assert "local/genq" in services["minio-bucket"]["command"][0]  # the bucket the header's example names
    assert "s3://genq/" in (ROOT / "docker-compose.yml").read_text()
    for name in ("web", "reconciler", "worker-gpu0", "worker-gpu1"):
        assert services[name]["environment"] is env


def test_the_worker_only_file_joins_shared_services_with_all_gpus():
    services = load_compose("docker-compose.worker.yml")["services"]
    assert set(services) == {"worker"}, "no database, Redis or reconciler of its own"
    worker = services["worker"]
    assert worker["command"] == ["genq", "worker", "--gpus", "all"]
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    env = worker["environment"]
    for shared in ("GENQ_DATABASE_URL", "GENQ_REDIS_URL", "GENQ_STORAGE_URL"):
        assert env[shared].startswith(f"${{{shared}:?"), f"{shared} must be required, not defaulted to this machine"
    assert "GENQ_STORAGE_DIR" not in env


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_referenced_files_exist(name):
    compose = load_compose(name)
    for service in compose["services"].values():
        if "build" in service:
            dockerfile = ROOT / service["build"]["dockerfile"]
            assert dockerfile.exists()
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY "):
                    for source in line.split()[1:-1]:
                        assert (ROOT / source).exists(), source
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
