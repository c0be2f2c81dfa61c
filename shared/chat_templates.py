"""Chat messages to a prompt, with the model's own chat template, as `transformers`'
`apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` renders it:
the same Jinja sandbox, options, filters and globals, and the tokenizer's special
tokens as variables. The web process renders here without importing `transformers`.

A model has a template when its directory holds `chat_template.jinja` (what
`save_pretrained` writes) or its `tokenizer_config.json` names a `chat_template`. A
model without one cannot take chat messages: `NoChatTemplate`, which the Batch API
reports as a line error (nothing is guessed: a made-up format would give the model a
prompt it was never trained on).
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.model_files import model_file, tokenizer_config
from shared.registry import ModelSpec

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class NoChatTemplate(Exception):
    """The model names no chat template."""


class ChatTemplateError(Exception):
    """The template refused the messages (`raise_exception`) or could not render."""


def chat_template(spec: ModelSpec) -> str | None:
    path = model_file(spec, "chat_template.jinja")
    if path is not None:
        return path.read_text()
    template = tokenizer_config(spec).get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) and template else None


def special_tokens(spec: ModelSpec) -> dict[str, str]:
    """The special tokens as text (a config may write one as `{"content": ...}`)."""
    config = tokenizer_config(spec)
    tokens = {}
    for name in SPECIAL_TOKENS:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


@lru_cache(maxsize=64)
def _template_of(name: str, source: str, registry_dir: Path) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """A model's template and special tokens, read once per process (a batch renders
    thousands of lines; a changed model directory needs a restart, as its weights do).
    `source` as the registry wrote it: a local path, or a Hugging Face id for the cache."""
    spec = ModelSpec(name=name, task="text-generation", source=source, registry_dir=registry_dir)
    return chat_template(spec), tuple(special_tokens(spec).items())


def render_chat(spec: ModelSpec, messages: list[dict[str, Any]]) -> str:
    template, tokens = _template_of(spec.name, spec.source, spec.registry_dir)
    if template is None:
        raise NoChatTemplate(f"model {spec.name!r} has no chat template (no chat_template.jinja and no chat_template "
                             "in its tokenizer_config.json): send its prompts to /v1/completions")
    try:
        return _compiled(template).render(messages=messages, add_generation_prompt=True, tools=None, documents=None,
                                          **dict(tokens))
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template of {spec.name!r} refused the messages: {exc}") from None


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=32)
def _compiled(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    try:
        return environment.from_string(template)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from None
