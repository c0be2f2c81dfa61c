"""Prompt length in tokens, checked at the door for text models.

The web process never imports torch or transformers: it reads the model's
`tokenizer.json` with the light `tokenizers` library. The limit is the registry's
`limits.prompt_tokens.max` if set, else the model's positions (`config.json`) less
`max_new_tokens`. A model whose tokenizer is not on this machine is not checked here
(its runner truncates from the left).
"""
from __future__ import annotations

import json
import threading

from shared.errors import LimitExceeded
from shared.model_files import model_file, tokenizer_of
from shared.registry import ModelSpec, Task, max_positions
from web.request_models import ValidatedJob


class PromptTokenLimits:
    def __init__(self):
        self._tokenizers: dict[str, object] = {}
        self._positions: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def check(self, job: ValidatedJob) -> list[int] | None:
        """Refuse a prompt over the limit; else each item's prompt tokens (special tokens
        included, 0 for an empty prompt: what a batch's `usage` counts), or None when
        nothing was checked."""
        spec = job.spec
        if spec.task is not Task.TEXT_GENERATION:
            return None
        limit = self.limit(spec, job.params)
        tokenizer = self._tokenizer(spec) if limit is not None else None
        if tokenizer is None:
            return None
        counts = []
        for i, encoding in enumerate(tokenizer.encode_batch([prompt for prompt, _seed in job.inputs])):
            if len(encoding.ids) > limit:
                path = job.item_path(i)
                raise LimitExceeded(f"{path} is {len(encoding.ids)} tokens; {spec.name} takes at most {limit} "
                                    f"with max_new_tokens {job.params.get('max_new_tokens')}", field=path)
            counts.append(len(encoding.ids) if job.inputs[i][0] else 0)
        return counts

    def limit(self, spec: ModelSpec, params: dict) -> int | None:
        bounds = spec.limits.get("prompt_tokens")
        if bounds is not None and bounds.max is not None:
            return int(bounds.max)
        positions = self._model_positions(spec)
        return None if positions is None else max(0, positions - int(params.get("max_new_tokens") or 0))

    def _model_positions(self, spec: ModelSpec) -> int | None:
        with self._lock:
            if spec.name not in self._positions:
                config = model_file(spec, "config.json")
                values = json.loads(config.read_text()) if config else {}
                self._positions[spec.name] = max_positions(values)
            return self._positions[spec.name]

    def _tokenizer(self, spec: ModelSpec):
        with self._lock:
            if spec.name not in self._tokenizers:  # looked up once per model, not per request
                self._tokenizers[spec.name] = tokenizer_of(spec)
            return self._tokenizers[spec.name]

