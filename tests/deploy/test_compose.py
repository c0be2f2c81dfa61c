"""docker-compose.yml cannot run here (no Docker engine): check its shape and that
every command and file it names exists."""
from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from genq.cli import main

ROOT = Path(__file__).resolve().parents[2]


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def genq_command_exists(argv: list[str]) -> bool:
    """`genq a b --opt ...`: the subcommand path exists in the CLI and accepts the options."""
    words = [w for w in argv[1:]]
    result = CliRunner().invoke(main, words + ["--help"])
    return result.exit_code == 0


def test_services_and_health_checks():
    services = load_compose()["services"]
    assert {"redis", "postgres", "migrate", "web", "worker-gpu0"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["command"] == ["genq", "db", "upgrade"]
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_genq_command_exists():
    for name, service in load_compose()["services"].items():
        command = service.get("command")
        if command and command[0] == "genq":
            assert genq_command_exists(command), f"{name}: {command}"


def test_one_worker_per_gpu_with_its_device():
    services = load_compose()["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    devices = []
    for name, service in workers.items():
        reservation = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert reservation["capabilities"] == ["gpu"]
        devices += reservation["device_ids"]
        assert service["command"][:3] == ["genq", "worker", "--gpus"]
    assert sorted(devices) == [str(i) for i in range(len(workers))]


def test_referenced_files_exist():
    compose = load_compose()
    dockerfile = ROOT / compose["services"]["web"]["build"]["dockerfile"]
    assert dockerfile.exists()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
