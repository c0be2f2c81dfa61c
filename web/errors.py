"""Every error becomes JSON `{"error": {"code", "message", "field"}}`; no traceback
ever reaches a client."""
from __future__ import annotations

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

from shared.errors import GenqError
from web.response_models import ErrorResponse

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, field: str | None = None):
    return ErrorResponse.of(code, message, field).reply(status)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(GenqError)
    def _genq_error(exc: GenqError):
        response = error_response(exc.status, exc.code, exc.message, exc.field)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="genq"'
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # `Allow` on a 405 (RFC 9110), `Location` on a redirect
            if name.lower() != "content-type":
                response.headers[name] = value
        if exc.code == 429:
            response.headers["Retry-After"] = str(getattr(exc, "retry_after", None) or 60)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "the server met an unexpected error; it has been logged")
