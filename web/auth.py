"""Who is calling. Every /v1 request carries `Authorization: Bearer <key>`; a missing,
malformed, unknown or revoked key gets the same 401. With GENQ_AUTH=off (loopback-only
development) every caller is an admin of the default tenant."""
from __future__ import annotations

import ipaddress

from flask import g, request

from shared.errors import GenqError
from shared.keys import KEY_PREFIX, Principal
from shared.orm import DEFAULT_TENANT
from web.context import db, genq

DEVELOPMENT_PRINCIPAL = Principal(DEFAULT_TENANT, admin=True)


class Unauthorized(GenqError):
    status = 401
    code = "unauthorized"


def require_api_key() -> None:
    """A `before_request` hook: sets `g.principal` or refuses the request. A CORS
    preflight (OPTIONS) carries no key by design and reads nothing: it passes."""
    if request.method == "OPTIONS":
        return
    if genq().settings.auth == "off":
        g.principal = DEVELOPMENT_PRINCIPAL
        return
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    principal = genq().keys.principal_of(key.strip(), db) if scheme.lower() == "bearer" and key.strip() else None
    if principal is None:
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")
    g.principal = principal


def current_principal() -> Principal:
    return g.principal


def rate_limit_key() -> str:
    """Requests are counted per API key (read from the header: the limiter runs before
    authentication), per address when there is none."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.startswith(KEY_PREFIX):
        return "key:" + key[len(KEY_PREFIX):].split("_", 1)[0][:16]
    return f"addr:{request.remote_addr}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
