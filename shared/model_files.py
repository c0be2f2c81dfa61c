"""Files of a model that processes without torch read: its tokenizer, its tokenizer
config (special tokens, chat template), and which weight files it has. A model's files
are in its local directory or in the local Hugging Face cache; nothing is downloaded.

The reconciler counts tokens with these for the `usage` of OpenAI-shaped answers; the
web process renders chat templates with them (`shared.chat_templates`). Both read with
the light `tokenizers` library, never `transformers`.

Whether a model's weights are here (`weights_of`) is asked by `genq models list`, by
the web process (`/v1/models` marks a model without them unavailable and a job for it
is refused) and by the worker before it loads one. A local directory is taken as it
is (a custom runner may keep any layout in it); a Hub id counts only when the cache
holds its config and every weight file `from_pretrained` would read, so a partial
download reads as missing rather than failing in the middle of a job.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.registry import ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_VARIANT_INFIX = re.compile(r"\.(fp16|bf16|fp32|ema|non_ema)\.", re.IGNORECASE)
PIPELINE_INDEX = "model_index.json"  # a diffusers pipeline: one folder per component
MODEL_CONFIG = "config.json"  # a transformers model, or a pipeline component that has weights

_lock = threading.Lock()
_tokenizers: dict[str, Any] = {}


def model_file(spec: ModelSpec, name: str) -> Path | None:
    """A file of the model: in its local directory, or in the local Hugging Face cache
    (None where it is in neither, a source that is no Hub id, such as a missing local
    directory, included)."""
    local = spec.local_source()
    if local is not None:
        path = local / name
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(spec.source, name)
    except ValueError:  # HFValidationError: not the form of a Hub id
        return None
    return Path(found) if isinstance(found, str) else None


def tokenizer_config(spec: ModelSpec) -> dict[str, Any]:
    """The model's `tokenizer_config.json` ({} when it has none or it is unreadable)."""
    path = model_file(spec, "tokenizer_config.json")
    try:
        config = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def tokenizer_of(spec: ModelSpec):
    """The model's `tokenizers.Tokenizer` (from its `tokenizer.json`), kept per file;
    None when the model has none on this machine."""
    path = model_file(spec, "tokenizer.json")
    if path is None:
        return None
    with _lock:
        if str(path) not in _tokenizers:
            from tokenizers import Tokenizer

            _tokenizers[str(path)] = Tokenizer.from_file(str(path))
        return _tokenizers[str(path)]


class TokenCounter:
    """Tokens of texts by model, for `usage`; 0 for a model without a tokenizer here."""

    def __init__(self, specs: dict[str, ModelSpec]):
        self._specs = specs
        self._tokenizers: dict[str, Any] = {}

    def count(self, model: str, text: str, special: bool = False) -> int:
        if model not in self._tokenizers:
            spec = self._specs.get(model)
            self._tokenizers[model] = tokenizer_of(spec) if spec is not None else None
        tokenizer = self._tokenizers[model]
        if tokenizer is None or not text:
            return 0
        return len(tokenizer.encode(text, add_special_tokens=special).ids)


@dataclass(frozen=True)
class Weights:
    """Whether a model's weights are on this machine. `reason` is for API clients (it
    names no path); `where` (the directory looked in) and `fetch` (a command that gets
    them on a machine with network access) are for operators."""

    available: bool
    reason: str | None = None
    where: str | None = None
    fetch: str | None = None


def weights_of(spec: ModelSpec) -> Weights:
    """Whether `spec`'s weights are here; see the module's docstring for what counts."""
    local = spec.local_source()
    if local is not None:
        return Weights(True, where=str(local))
    repo_id = hub_id(spec)
    if repo_id is None:
        return Weights(False, "its model directory does not exist", where=str(spec.source_path()))
    fetch = f"hf download {repo_id}"
    snapshot = hub_snapshot(repo_id)
    if snapshot is None:
        return Weights(False, "its weights are not in this machine's Hugging Face cache",
                       where=str(hub_repo_dir(repo_id)), fetch=fetch)
    missing = missing_weights(snapshot, spec.variant)
    if missing is not None:
        return Weights(False, f"its download in the Hugging Face cache is incomplete: {missing}",
                       where=str(snapshot), fetch=fetch)
    return Weights(True, where=str(snapshot))


def model_directory(spec: ModelSpec) -> Path | None:
    """The directory the model's files are in: its local directory, or its snapshot in
    the Hugging Face cache (None when neither is here)."""
    local = spec.local_source()
    if local is not None:
        return local
    repo_id = hub_id(spec)
    return hub_snapshot(repo_id) if repo_id is not None else None


def hub_id(spec: ModelSpec) -> str | None:
    """The source as a Hugging Face id, when it has that form ("gpt2", "org/name")."""
    try:
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        return None
    try:
        validate_repo_id(spec.source)
    except ValueError:  # HFValidationError: a path, not an id
        return None
    return spec.source


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache this process reads (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_repo_dir(repo_id: str) -> Path:
    """Where the cache keeps a model: <cache>/models--<org>--<name>."""
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of the model's `main` revision, or None; never downloads."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError, HFValidationError
        return None


def weight_files(directory: Path | None, variant: str | None = None) -> list[Path]:
    """The weight files `from_pretrained` reads from `directory`: a pipeline's component
    folders (those its model_index.json names), else a model's own top-level files, else
    (another layout) those in the folders below it. In each folder the `variant`'s files
    where it has them, and safetensors rather than .bin where both are there (a Hub
    snapshot often holds both, and single-file checkpoints beside the pipeline's folders)."""
    if directory is None or not directory.is_dir():
        return []
    index = _pipeline_components(directory)
    if index is not None:
        return [path for name in index for path in _folder_weights(directory / name, variant)]
    files = _folder_weights(directory, variant)
    if files:
        return files
    return [path for folder in _folders_below(directory) for path in _folder_weights(folder, variant)]


def missing_weights(directory: Path, variant: str | None = None) -> str | None:
    """What a model directory lacks before it can be loaded (None: nothing): its config,
    a component's folder or weights, a shard its index names."""
    index = _pipeline_components(directory)
    if index is None and not (directory / MODEL_CONFIG).is_file():
        return f"neither {PIPELINE_INDEX} nor {MODEL_CONFIG}"
    chosen: list[Path] = []
    for name in index if index is not None else [""]:
        folder = directory / name
        label = f"{name}/" if name else "the model"
        if not folder.is_dir():
            return f"{label} is missing"
        files = _folder_weights(folder, variant)
        if (folder / MODEL_CONFIG).is_file() and not files:
            return f"{label} has no weight files"
        for shard in _missing_shards(folder, {p.name for p in files}):
            return f"{(name + '/' if name else '')}{shard} is missing"
        chosen += files
    if variant and chosen and not any(f".{variant}." in p.name for p in chosen):
        # transformers reads only the variant's files; diffusers takes a component's plain
        # files where it has none, but not a pipeline with none of them at all
        return f"no weight files of variant {variant}"
    return None


def _pipeline_components(directory: Path) -> list[str] | None:
    """The component folders a pipeline's model_index.json names (None: no pipeline)."""
    try:
        index = json.loads((directory / PIPELINE_INDEX).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    return sorted(name for name, value in index.items()
                  if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None)


def _folders_below(directory: Path) -> list[Path]:
    """The folders below `directory`, hidden ones (.git, .cache, a virtualenv) left out."""
    found = []
    for root, dirs, _files in os.walk(directory, followlinks=False):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        found += [Path(root) / name for name in dirs]
    return found


def _folder_weights(folder: Path, variant: str | None) -> list[Path]:
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    plain = [p for p in files if not _VARIANT_INFIX.search(p.name)]
    chosen = ([p for p in files if f".{variant}." in p.name] or plain) if variant else plain
    safetensors = [p for p in chosen if p.suffix == ".safetensors"]
    return safetensors or chosen


def _missing_shards(folder: Path, chosen: set[str]) -> list[str]:
    """Shards that are not there, of the sharded checkpoints (`*.index*.json`) of which
    some shard is among the `chosen` files (an index of the other format or variant is
    not read)."""
    missing: set[str] = set()
    for index_file in sorted(folder.glob("*.index*.json")):
        try:
            shards = set((json.loads(index_file.read_text()).get("weight_map") or {}).values())
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        if shards & chosen:
            missing |= {shard for shard in shards if not (folder / str(shard)).is_file()}
    return sorted(missing)
