"""build_runner: choice by task, custom runners, and no torch on import."""
from __future__ import annotations

import subprocess
import sys

import pytest

from shared.errors import ConfigError
from shared.registry import ModelSpec
from worker.runners import build_runner


class EchoRunner:
    """A custom runner for tests: returns each prompt upper-cased."""

    def __init__(self, spec, device):
        self.spec, self.device = spec, device

    def setup(self) -> None:
        pass

    def predict(self, inputs, params, should_stop=None):
        from worker.runners.base import ItemOutput

        return [ItemOutput(text=item.prompt.upper()) for item in inputs]


def spec(task: str, runner: str | None = None) -> ModelSpec:
    return ModelSpec(name="m", task=task, source="/nonexistent", runner=runner)


def test_importing_runners_does_not_import_torch():
    code = "import sys, worker.runners, worker.runners.base; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "task, class_name",
    [("text-generation", "TextRunner"), ("text-to-image", "ImageRunner"), ("unconditional-image", "ImageRunner")],
)
def test_builtin_runner_by_task(task, class_name):
    runner = build_runner(spec(task), "cpu")
    assert type(runner).__name__ == class_name
    assert runner.device == "cpu"


def test_custom_runner_by_import_path():
    runner = build_runner(spec("text-generation", f"{__name__}:EchoRunner"), "cuda:1")
    assert isinstance(runner, EchoRunner) and runner.device == "cuda:1"


@pytest.mark.parametrize("path", ["no_such_module_xyz:Runner", f"{__name__}:NoSuchClass", "nocolon"])
def test_bad_runner_path_is_a_config_error(path):
    with pytest.raises(ConfigError):
        build_runner(spec("text-generation", path), "cpu")
