"""What the OpenAI Batch API tests share: a registry with a chat model (the tiny text
model with a chat template of its own) and JSONL input lines."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests import tiny_models

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('a conversation cannot start with the assistant') }}"
    "{% endif %}{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def registry_with_chat_model(root: Path, model_dirs: dict[str, Path]) -> Path:
    """models.yaml serving tiny-text, tiny-sd, tiny-uncond and tiny-chat (tiny-text's
    weights and tokenizer with `chat_template.jinja`)."""
    root.mkdir(parents=True, exist_ok=True)
    chat_dir = root / "tiny-chat"
    if not chat_dir.exists():
        shutil.copytree(model_dirs["text"], chat_dir)
        (chat_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    entries = tiny_models.tiny_registry_entries(model_dirs["text"], model_dirs["uncond"], model_dirs["sd"])
    entries["models"]["tiny-chat"] = dict(entries["models"]["tiny-text"], source=str(chat_dir.resolve()))
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def jsonl(lines: list[dict | str]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def completion_line(custom_id: str, prompt: str, url: str = "/v1/completions", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": "tiny-text", "prompt": prompt, "max_tokens": 8, **body}}


def chat_line(custom_id: str, content: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny-chat", "messages": [{"role": "user", "content": content}], "max_tokens": 8,
                     **body}}
