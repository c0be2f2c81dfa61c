"""Security headers, and CORS (off unless configured)."""
from __future__ import annotations

from flask import Flask, Response
from flask_cors import CORS

from web.idempotency import HEADER as IDEMPOTENCY_HEADER

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
HTML_SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"}


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
