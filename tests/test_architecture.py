"""The architecture's rules, executable: the import-linter contracts in pyproject.toml
(web and worker never import each other; shared imports neither; the web process never
loads torch, transformers, diffusers or accelerate, directly or through shared)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    run = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "3 kept, 0 broken" in run.stdout


def test_a_broken_contract_is_caught(tmp_path):
    """The same contracts over a copy of the tree where web imports worker: it must fail."""
    for name in ("shared", "web", "worker", "genq", "migrations"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "web" / "leak.py").write_text("from worker.runners import text  # noqa: F401\n")
    run = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert run.returncode != 0 and "BROKEN" in run.stdout, run.stdout[-2000:]
