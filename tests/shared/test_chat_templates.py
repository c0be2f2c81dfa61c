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
