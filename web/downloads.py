"""Serving an item's stored output: streamed from storage chunk by chunk (an image is
never held whole in the web process), or, when the client asks with `?redirect=1` and
the storage can sign URLs (S3), a 302 to a presigned URL so the bytes skip the API."""
from __future__ import annotations

from flask import Response, redirect

from shared.errors import InvalidRequest

REDIRECT_VALUES = {"1": True, "true": True, "0": False, "false": False}  # the OpenAPI enum, exactly


def wants_redirect(args) -> bool:
    """Whether `?redirect=` asks for a presigned URL; any other query parameter is refused,
    as every other route refuses the parameters it does not declare."""
    unknown = sorted(set(args) - {"redirect"})
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0][:40]!r}", field=unknown[0][:40])
    if "redirect" not in args:
        return False
    value = args["redirect"]
    if value not in REDIRECT_VALUES:
        raise InvalidRequest(f"redirect must be 1, 0, true or false, not {value[:20]!r}", field="redirect")
    return REDIRECT_VALUES[value]


def output_response(storage, key: str, *, redirect_to_storage: bool, presign_seconds: int) -> Response:
    if redirect_to_storage:
        url = storage.presigned_url(key, presign_seconds)
        if url is not None:
            response = redirect(url, code=302)
            response.headers["Cache-Control"] = "no-store"  # the URL expires; never cache the answer
            return response
    stored = storage.open(key)
    response = Response(stored.chunks, mimetype=stored.content_type, direct_passthrough=True)
    response.content_length = stored.size
    return response
