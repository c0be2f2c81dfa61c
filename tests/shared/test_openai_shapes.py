"""The lines of a batch's output and error files, checked against the `openai` package's
own models (strictly: every field it declares, typed as it declares it)."""
from __future__ import annotations

import pytest
from openai.types import Completion, ImagesResponse
from openai.types.chat import ChatCompletion

from shared import openai_shapes as shapes


@pytest.mark.parametrize("text,stops,expected", [
    ("fox STOP jumps", ["STOP"], ("fox ", True)),
    ("a.b;c", [";", "."], ("a", True)),  # the earliest stop string, whichever is listed first
    ("nothing here", ["x"], ("nothing here", False)),
    ("STOP at once", ["STOP"], ("", True)),
    ("no stops", None, ("no stops", False)),
])
def test_stop_strings_cut_the_text_at_the_first_one(text, stops, expected):
    assert shapes.apply_stop(text, stops) == expected


@pytest.mark.parametrize("stopped,tokens,max_tokens,reason", [
    (True, 16, 16, "stop"), (False, 16, 16, "length"), (False, 3, 16, "stop"), (False, 99, None, "stop")])
def test_finish_reason(stopped, tokens, max_tokens, reason):
    assert shapes.finish_reason(stopped, tokens, max_tokens) == reason


CHOICES = [shapes.Choice("hello", "stop", 2), shapes.Choice("world!", "length", 3)]


def test_a_completion_body_is_an_sdk_completion():
    body = Completion.model_validate(shapes.completion_body("j-0", "tiny-text", 1764547200, CHOICES, 4), strict=True)
    assert body.object == "text_completion" and [c.text for c in body.choices] == ["hello", "world!"]
    assert [c.index for c in body.choices] == [0, 1] and body.choices[1].finish_reason == "length"
    assert body.usage.model_dump(exclude_none=True) == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_a_chat_body_is_an_sdk_chat_completion():
    body = ChatCompletion.model_validate(shapes.chat_body("j-0", "tiny-chat", 1764547200, CHOICES, 4), strict=True)
    assert body.object == "chat.completion" and body.choices[0].message.role == "assistant"
    assert body.choices[0].message.content == "hello" and body.usage.total_tokens == 9


def test_an_images_body_is_an_sdk_images_response():
    body = ImagesResponse.model_validate(shapes.images_body(1764547200, ["aGk=", "eW8="]), strict=True)
    assert [image.b64_json for image in body.data] == ["aGk=", "eW8="]


def test_output_and_error_lines():
    ok = shapes.output_line("batch_req_1", "a", "req_1", {"x": 1})
    assert ok == {"id": "batch_req_1", "custom_id": "a", "response": {"status_code": 200, "request_id": "req_1",
                                                                       "body": {"x": 1}}, "error": None}
    failed = shapes.failed_line("batch_req_2", "b", "req_2", "out of memory")
    assert failed["response"]["status_code"] == 500 and failed["error"] is None
    assert failed["response"]["body"]["error"] == {"message": "out of memory", "type": "server_error", "param": None,
                                                   "code": "generation_failed"}
    assert shapes.stopped_line("batch_req_3", "c", "expired")["error"]["code"] == "batch_expired"
    assert shapes.stopped_line("batch_req_3", "c", "cancelled")["response"] is None
