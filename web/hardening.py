"""Rate limits per API key, security headers, and CORS (off unless configured)."""
from __future__ import annotations

from flask import Flask, Response
from flask_cors import CORS
from flask_limiter import Limiter

from web.api import api
from web.auth import rate_limit_key
from web.idempotency import HEADER as IDEMPOTENCY_HEADER

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
HTML_SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"}


def init_rate_limits(app: Flask, settings) -> Limiter:
    """Counted in Redis so every web process shares them. If Redis is down, requests are
    not limited (a submit must still be accepted and stored)."""
    limiter = Limiter(
        key_func=rate_limit_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
        swallow_errors=True,
        headers_enabled=False,  # it would overwrite the Retry-After of our own 429s
    )
    limiter.limit(settings.rate_limit)(api)
    return limiter


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.mimetype == "text/html":
        for name, value in HTML_SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def init_cors(app: Flask, origins: list[str]) -> None:
    """Only the listed origins, only the API, only the headers and methods it takes."""
    CORS(app, resources={r"/v1/*": {"origins": origins}}, allow_headers=["Authorization", "Content-Type", IDEMPOTENCY_HEADER],
         methods=["GET", "POST", "OPTIONS"])
