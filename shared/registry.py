"""The model registry: a YAML file that names every model genq serves.

Example entry::

    models:
      demo-text:
        task: text-generation
        source: ./var/models/demo-text      # a local directory, or a Hugging Face id
        dtype: float32
        micro_batch_size: 32
        defaults: {max_new_tokens: 32}
        limits: {max_new_tokens: {max: 256}}

A relative `source` is resolved against the registry file's directory. A Hugging Face
id is resolved from the local cache only: genq never downloads weights at run time.
"""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError


class Task(str, enum.Enum):
    TEXT_GENERATION = "text-generation"
    TEXT_TO_IMAGE = "text-to-image"
    UNCONDITIONAL_IMAGE = "unconditional-image"
    GAN_IMAGE = "gan-image"  # a torch generator module: latent (+ class) -> image
    VAE_IMAGE = "vae-image"  # a VAE's decoder, the same contract

    @property
    def is_image(self) -> bool:
        return self is not Task.TEXT_GENERATION


class Bounds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None


class ModelSpec(BaseModel):
    """One registry entry. `micro_batch_size` may shrink at run time (out of memory)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    task: Task
    source: str
    dtype: str = Field("auto", description="A torch dtype name, or 'auto': bfloat16 on a CUDA GPU (float16 before Ampere), float32 on the CPU.")
    variant: str | None = Field(None, description="Weights variant to load, e.g. 'fp16' (files like model.fp16.safetensors).")
    micro_batch_size: int = Field(8, ge=1)
    defaults: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Bounds] = Field(default_factory=dict)
    runner: str | None = Field(None, description="Import path 'module:Class' of a custom runner.")
    options: dict[str, Any] = Field(default_factory=dict, description="Runner-specific settings (e.g. class labels).")
    registry_dir: Path = Field(Path("."), exclude=True)

    def source_path(self) -> Path:
        """The source read as a path (relative to the registry file), existing or not."""
        path = Path(self.source).expanduser()
        return path if path.is_absolute() else self.registry_dir / path

    def local_source(self) -> Path | None:
        """The source as a local directory, if it is one."""
        path = self.source_path()
        return path if path.exists() else None


class Registry:
    """All models of one registry file, by name."""

    def __init__(self, specs: dict[str, ModelSpec]):
        self._specs = dict(specs)

    def get(self, name: str) -> ModelSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def slice_items(self, name: str, slice_max_items: int) -> int:
        """Most items one claim of model `name` takes: GENQ_SLICE_MAX_ITEMS, or one whole
        micro-batch where the model's is larger (slices of 64 would cut the demo GAN's
        micro-batches of 256 to 64)."""
        spec = self.get(name)
        return slice_max_items if spec is None else max(slice_max_items, spec.micro_batch_size)

    def __iter__(self):
        return iter(self._specs[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._specs)


def load_registry(path: Path | str) -> Registry:
    """Read and check a registry file; a broken file raises `ConfigError` naming the entry."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model registry {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"model registry {path} is not valid YAML: {exc}") from exc
    entries = document.get("models") or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"model registry {path}: 'models' must be a mapping of name to entry")
    specs = {}
    for name, entry in entries.items():
        try:
            specs[name] = ModelSpec(name=name, registry_dir=path.resolve().parent, **(entry or {}))
        except ValidationError as exc:
            raise ConfigError(f"model registry {path}: entry {name!r} is invalid: {exc}") from exc
    return Registry(specs)


# Where a model's config names the longest sequence it takes, in the order they are read.
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def max_positions(config: dict[str, Any]) -> int | None:
    """The longest sequence (prompt plus new tokens) a model's `config.json` allows, if
    it names one. The web process (which reads the file) and the worker (which has the
    loaded config) both ask this, so they cannot disagree on a limit."""
    return next((config[name] for name in POSITION_FIELDS
                 if isinstance(config.get(name), int) and not isinstance(config.get(name), bool) and config[name] > 0),
                None)
