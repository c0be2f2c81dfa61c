"""The lines of a batch's output and error files, shaped as OpenAI's: pure functions of
a request's items, so they are tested without a database or a model.

An output line is `{id, custom_id, response: {status_code, request_id, body}, error}`,
its body what the endpoint answers (`text_completion`, `chat.completion` with `usage`,
images with `data[].b64_json`). A request whose item failed goes to the error file
with status 500 and OpenAI's error body; one that never ran (the batch was cancelled
or expired) goes there with `response: null` and `error: {code, message}`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
IMAGES = "/v1/images/generations"
ENDPOINTS = (COMPLETIONS, CHAT_COMPLETIONS, IMAGES)
TEXT_ENDPOINTS = (COMPLETIONS, CHAT_COMPLETIONS)

# The error code of a request that never ran, by why its batch stopped.
STOPPED_CODES = {"cancelled": "batch_cancelled", "expired": "batch_expired"}


@dataclass(frozen=True)
class Choice:
    """One generated text, cut at its first stop string."""

    text: str
    finish_reason: str  # "stop" or "length"
    tokens: int


def apply_stop(text: str, stops: list[str] | None) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found. OpenAI's `stop`
    ends generation there; genq generates on and cuts the text, which gives the same text."""
    cut = min((position for position in (text.find(stop) for stop in stops or ()) if position >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish_reason(stopped: bool, tokens: int, max_tokens: int | None) -> str:
    """`length` when the text used the whole token budget without a stop string."""
    return "length" if not stopped and max_tokens is not None and tokens >= max_tokens else "stop"


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion_tokens = sum(choice.tokens for choice in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(response_id: str, model: str, created: int, choices: list[Choice],
                    prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"cmpl-{response_id}", "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": choice.text, "index": index, "logprobs": None, "finish_reason": choice.finish_reason}
                    for index, choice in enumerate(choices)],
        "usage": usage(prompt_tokens, choices), "system_fingerprint": None,
    }


def chat_body(response_id: str, model: str, created: int, choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{response_id}", "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": index, "message": {"role": "assistant", "content": choice.text, "refusal": None},
                     "logprobs": None, "finish_reason": choice.finish_reason}
                    for index, choice in enumerate(choices)],
        "usage": usage(prompt_tokens, choices), "system_fingerprint": None,
    }


def images_body(created: int, images_b64: list[str]) -> dict[str, Any]:
    return {"created": created, "data": [{"b64_json": image, "revised_prompt": None} for image in images_b64]}


def output_line(line_id: str, custom_id: str, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": line_id, "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def failed_line(line_id: str, custom_id: str, request_id: str, message: str) -> dict[str, Any]:
    error = {"message": message, "type": "server_error", "param": None, "code": "generation_failed"}
    return {"id": line_id, "custom_id": custom_id,
            "response": {"status_code": 500, "request_id": request_id, "body": {"error": error}}, "error": None}


def stopped_line(line_id: str, custom_id: str, stop_reason: str | None) -> dict[str, Any]:
    code = STOPPED_CODES.get(stop_reason or "", "request_cancelled")
    message = {"batch_cancelled": "the batch was cancelled before this request ran",
               "batch_expired": "the batch expired (its completion window passed) before this request ran",
               }.get(code, "this request's genq items were cancelled before they ran")
    return {"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
