"""Chat messages rendered without transformers give what transformers'
`apply_chat_template` gives, and a model without a template says so."""
from __future__ import annotations

import json
import shutil

import pytest

from shared.chat_templates import ChatTemplateError, NoChatTemplate, render_chat
from shared.registry import ModelSpec
from tests.helpers.openai_batches import CHAT_TEMPLATE

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Open the file"},
            {"role": "assistant", "content": "Done."}, {"role": "user", "content": "Now \"close\" it ünd go"}]
# A template in the style of the Hub's (namespace, loop controls, tojson, trimmed blocks).
HUB_STYLE = (
    "{%- set ns = namespace(system='') -%}\n"
    "{%- for message in messages -%}\n"
    "  {%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}{%- continue -%}{%- endif -%}\n"
    "  <|{{ message['role'] }}|>{{ message['content'] | tojson }}{{ eos_token }}\n"
    "{% endfor -%}\n"
    "{%- if add_generation_prompt %}<|assistant|>{% if ns.system %}[{{ ns.system }}]{% endif %}{% endif -%}"
)


def spec_of(directory) -> ModelSpec:
    return ModelSpec(name="m", task="text-generation", source=str(directory))


@pytest.fixture
def model_dir(tmp_path, tiny_model_dirs):
    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["text"], directory)
    return directory


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, HUB_STYLE])
@pytest.mark.parametrize("where", ["jinja_file", "tokenizer_config"])
def test_renders_as_transformers_does(model_dir, template, where):
    from transformers import AutoTokenizer

    if where == "jinja_file":
        (model_dir / "chat_template.jinja").write_text(template)
    else:
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    expected = AutoTokenizer.from_pretrained(model_dir).apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True)
    assert render_chat(spec_of(model_dir), MESSAGES) == expected


def test_a_model_without_a_template_is_refused(model_dir):
    with pytest.raises(NoChatTemplate, match="no chat template"):
        render_chat(spec_of(model_dir), MESSAGES)


def test_a_template_that_refuses_the_messages(model_dir):
    (model_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="cannot start with the assistant"):
        render_chat(spec_of(model_dir), [{"role": "assistant", "content": "hi"}])


def test_a_template_cannot_reach_python_internals(model_dir):
    (model_dir / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        render_chat(spec_of(model_dir), MESSAGES)


def test_a_model_from_the_hub_cache_renders_its_template(tmp_path, monkeypatch):
    """A registry entry that names a Hugging Face id, resolved from the local cache."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--acme--tiny-chat" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"chat_template": HUB_STYLE, "eos_token": "</s>"}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = ModelSpec(name="hub-chat", task="text-generation", source="acme/tiny-chat", registry_dir=tmp_path / "reg")
    assert render_chat(spec, MESSAGES[1:2]) == '<|user|>"Open the file"</s>\n<|assistant|>'
    missing = ModelSpec(name="gone", task="text-generation", source="./not/here/at/all", registry_dir=tmp_path)
    with pytest.raises(NoChatTemplate):  # neither a directory nor a Hub id: no template, not a crash
        render_chat(missing, MESSAGES)
