"""Every error becomes JSON `{"error": {"code", "message", "field"}}` (on the
OpenAI-compatible routes, OpenAI's envelope of the same facts: `web.openai_common`); no
traceback ever reaches a client."""
from __future__ import annotations

import logging

from flask import Flask
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from shared.errors import DatabaseUnavailable, GenqError
from web.response_models import ErrorResponse

log = logging.getLogger(__name__)


class Forbidden(GenqError):
    """A well-formed request this deployment refuses by its policy (not the key's tenant's
    to read, a webhook destination its settings do not allow)."""

    status = 403
    code = "forbidden"


def error_response(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
    response = ErrorResponse.of(code, message, field).reply(status)
    response.headers.update(headers or {})
    return response


def _of_genq_error(exc: GenqError) -> tuple[int, str, str, str | None, dict[str, str]]:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="genq"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return exc.status, exc.code, exc.message, exc.field, headers


def _of_http_error(exc: HTTPException) -> tuple[int, str, str, None, dict[str, str]]:
    code = (exc.name or "error").lower().replace(" ", "_")
    # `Allow` on a 405 (RFC 9110), `Location` on a redirect
    headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
    if exc.code == 429:
        headers["Retry-After"] = str(getattr(exc, "retry_after", None) or 60)
    return exc.code or 500, code, exc.description or exc.name, None, headers


def register_error_handlers(target, render=error_response) -> None:
    """Typed and HTTP errors of `target` (the app, or a blueprint with an envelope of its
    own) answered by `render(status, code, message, field, headers)`; on the app, anything
    else too, as a 500 that says nothing of the cause."""
    target.register_error_handler(GenqError, lambda exc: render(*_of_genq_error(exc)))
    target.register_error_handler(HTTPException, lambda exc: render(*_of_http_error(exc)))
    for unreachable in (OperationalError, PoolTimeout):
        target.register_error_handler(unreachable, lambda exc: render(*_of_genq_error(_database_unavailable(exc))))
    if isinstance(target, Flask):
        target.register_error_handler(Exception, _unexpected)


DATABASE_RETRY_AFTER_SECONDS = 5


def _database_unavailable(exc: Exception) -> DatabaseUnavailable:
    """A connection refused or dropped, or none free in the pool in time (and the other
    transient states a driver calls operational: a lock wait or a deadlock given up, a
    statement cancelled): a 503 with Retry-After, not a 500 (the cause goes to the log,
    not to the client)."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
    log.warning("database unavailable: %s", cause[0][:300])
    return DatabaseUnavailable("the database is unreachable or busy now; try again", retry_after=DATABASE_RETRY_AFTER_SECONDS)


def _unexpected(exc: Exception):
    log.exception("unhandled error")
    return error_response(500, "internal_error", "the server met an unexpected error; it has been logged")
