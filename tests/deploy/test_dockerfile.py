"""The Dockerfile cannot be built here (no Docker engine): check that it installs the
torch build its TORCH_BACKEND argument names (a CUDA build by default, with the driver
it needs stated), the version pyproject.toml pins, and that its build-time check really
refuses a torch of the wrong kind: the check's own command is run against this
machine's torch (a CPU build)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not current and (line.startswith("#") or not line.strip()):
            continue
        current += line[:-1] if line.endswith("\\") else line
        if not line.endswith("\\"):
            joined.append(current)
            current = ""
    return joined


def build_args() -> dict[str, str]:
    return dict(line.split(None, 1)[1].split("=", 1) for line in instructions() if line.startswith("ARG "))


def torch_install() -> str:
    [run] = [line for line in instructions() if line.startswith("RUN ") and "download.pytorch.org" in line]
    return run


def test_torch_comes_from_the_index_of_the_chosen_backend_a_cuda_build_by_default():
    args = build_args()
    assert re.fullmatch(r"cu\d{3}", args["TORCH_BACKEND"]), "a GPU image by default"
    install = torch_install()
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_BACKEND}"' in install
    assert '"torch==${TORCH_VERSION}"' in install
    pinned = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert args["TORCH_VERSION"] == pinned, "the image's torch is the version pyproject.toml pins (pip then keeps it)"
    assert [i for i in instructions() if i.startswith("RUN ")][0] == install, "torch before `pip install .`"


def test_the_default_cuda_build_states_the_driver_it_needs():
    backend = build_args()["TORCH_BACKEND"]
    header = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"#\s+{backend} \(default\)\s+CUDA [\d.]+: needs an NVIDIA driver >= \d+", header)
    assert "TORCH_BACKEND=cpu" in header


def build_check(backend: str) -> subprocess.CompletedProcess:
    """The Dockerfile's check after installing torch, run with this interpreter."""
    check = torch_install().split("&&", 1)[1].strip().replace("${TORCH_BACKEND}", backend)
    argv = shlex.split(check)
    assert argv[0] == "python"
    return subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs this machine's torch to be a CPU build")
def test_the_build_check_refuses_a_cpu_wheel_for_a_cuda_backend_and_accepts_it_for_cpu():
    assert build_check("cpu").returncode == 0
    refused = build_check(build_args()["TORCH_BACKEND"])
    assert refused.returncode != 0
    assert f"TORCH_BACKEND={build_args()['TORCH_BACKEND']} installed torch" in refused.stderr


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.worker.yml"])
def test_compose_builds_pass_the_backend_with_the_dockerfiles_default(name):
    compose = yaml.safe_load((ROOT / name).read_text())
    default = build_args()["TORCH_BACKEND"]
    builds = [service["build"] for service in compose["services"].values() if "build" in service]
    assert builds
    for build in builds:
        assert build["args"]["TORCH_BACKEND"] == f"${{TORCH_BACKEND:-{default}}}"
