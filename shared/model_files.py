"""Files of a model that processes without torch read: its tokenizer, its tokenizer
config (special tokens, chat template). A model's files are in its local directory or
in the local Hugging Face cache; nothing is downloaded.

The reconciler counts tokens with these for the `usage` of OpenAI-shaped answers; the
web process renders chat templates with them (`shared.chat_templates`). Both read with
the light `tokenizers` library, never `transformers`.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from shared.registry import ModelSpec

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
