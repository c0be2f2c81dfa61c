"""Model runners behind one small contract (see `base.Runner`).

Importing this package does not import torch, transformers or diffusers: the runner
modules are imported by `build_runner`, when a model is actually about to be loaded.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.registry import ModelSpec
    from worker.runners.base import Runner

# Task -> "module:Class" of the built-in runner.
_BUILTIN_RUNNERS = {
    "text-generation": "worker.runners.text:TextRunner",
    "text-to-image": "worker.runners.image:ImageRunner",
    "unconditional-image": "worker.runners.image:ImageRunner",
    "gan-image": "worker.runners.generator:GeneratorImageRunner",
    "vae-image": "worker.runners.generator:GeneratorImageRunner",
}


def build_runner(spec: "ModelSpec", device: str = "cpu") -> "Runner":
    """A runner for `spec` on `device` (not set up yet: call `setup()`).

    `spec.runner` ("module:Class") overrides the choice by task; the class is called
    as `Class(spec, device)`.
    """
    task = getattr(spec.task, "value", spec.task)
    path = spec.runner or _BUILTIN_RUNNERS.get(task)
    if path is None:
        raise ConfigError(f"model {spec.name!r}: no runner for task {task!r}")
    return import_runner_class(path)(spec, device)


def import_runner_class(path: str) -> type:
    """Import "package.module:Class" (a dotted "package.module.Class" works too)."""
    module_name, sep, class_name = path.partition(":")
    if not sep:
        module_name, _, class_name = path.rpartition(".")
    if not module_name or not class_name:
        raise ConfigError(f"runner path {path!r} is not of the form 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"runner path {path!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ConfigError(f"runner path {path!r}: module {module_name!r} has no {class_name!r}") from None
