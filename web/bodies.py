"""Reading a JSON request body so that no byte sequence can become a 500.

JSON text may nest deeper than the decoder's recursion limit, and it may spell lone
surrogates (`"\\ud800"`), which decode to Python strings that are not Unicode scalar
values: no database, tokenizer or file can store them. Both are the client's mistake
and answer 400 naming where it is.
"""
from __future__ import annotations

from flask import Request

from shared.errors import InvalidRequest

NOT_JSON = "the request body must be JSON (Content-Type: application/json)"


def json_body(request: Request) -> object:
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise InvalidRequest("the request body nests too deeply", field=None) from None
    if body is None:
        raise InvalidRequest(NOT_JSON, field=None)
    refuse_lone_surrogates(body)
    return body


def refuse_lone_surrogates(body: object) -> None:
    """Walk the decoded body without recursion (its depth is the client's choice)."""
    stack: list[tuple[str, object]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            _check_text(path, value)
        elif isinstance(value, dict):
            for key, child in value.items():
                child_path = f"{path}.{key}" if path else str(key)
                _check_text(path or None, key)
                stack.append((child_path, child))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), child) for i, child in enumerate(value))


def _check_text(path: str | None, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = None if path is None else path.encode("utf-8", "backslashreplace").decode()
        raise InvalidRequest("text must be valid Unicode: a lone surrogate (\\ud800-\\udfff) is not a character",
                             field=shown or None) from None
