"""Small helpers shared by the runners: where to load a model from, dtypes, seeds."""
from __future__ import annotations

from typing import Any

import torch

from shared.registry import ModelSpec

_SEED_MASK = (1 << 64) - 1


def resolve_source(spec: ModelSpec) -> str:
    """The model's local directory if it exists, else its Hugging Face id.

    Callers load with `local_files_only=True`, so an id is resolved from the local
    cache only: a model that is not there fails to load instead of downloading.
    """
    local = spec.local_source()
    return str(local) if local is not None else spec.source


def torch_dtype(name: str) -> torch.dtype | str:
    """`"float16"` -> `torch.float16`, `"auto"` stays; an unknown name raises `ValueError`."""
    if name == "auto":
        return name
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


def load_options(spec: ModelSpec, device: str = "cpu") -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` (transformers models and diffusers pipelines):
    local files only, the registry's dtype and weights `variant` (e.g. `fp16`: load
    `model.fp16.safetensors`, half the bytes to read), and on a GPU `device_map` so the
    weights are loaded straight onto the device instead of into host memory first
    (eight workers starting at once would otherwise hold eight host copies)."""
    options: dict[str, Any] = {"dtype": torch_dtype(spec.dtype), "local_files_only": True}
    if spec.variant:
        options["variant"] = spec.variant
    if device != "cpu":
        options["device_map"] = device
    return options


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator for one item: a CPU stream is the same on every machine and device."""
    return torch.Generator(device="cpu").manual_seed(int(seed) & _SEED_MASK)


def param(params: dict[str, Any], name: str, default: Any = None) -> Any:
    """`params[name]`, or `default` when it is missing or None."""
    value = params.get(name)
    return default if value is None else value
