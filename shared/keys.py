"""API keys. A key is shown once, at creation; the database keeps its SHA-256 (keys are
long random strings, so a fast hash is enough) and a short prefix that names it in
listings and logs."""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest, NotFound
from shared.orm import ApiKey, utcnow

KEY_PREFIX = "gq_"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant whose jobs they see, and whether they see all."""

    tenant: str
    admin: bool
    key_prefix: str | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, tenant: str, admin: bool = False, label: str | None = None) -> tuple[ApiKey, str]:
    """A new key for `tenant`; returns the row and the key, which is not stored."""
    if not TENANT_PATTERN.match(tenant):
        raise InvalidRequest("a tenant name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit", field="tenant")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=secrets.token_hex(16), tenant=tenant, prefix=prefix, key_hash=hash_key(key), admin=admin,
                 label=label, created_at=utcnow())
    session.add(row)
    return row, key


def authenticate(session: Session, key: str, digest: str | None = None) -> Principal | None:
    """The principal of an active key, or None for an unknown or revoked one (`digest`:
    the key's hash, when the caller has it already)."""
    digest = digest or hash_key(key)
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))).first()
    return None if row is None else Principal(row.tenant, row.admin, row.prefix)


class KeyCache:
    """Keys this web process checked recently, by their hash, each trusted for `ttl`
    seconds: a submit then costs no database read for its key. An unknown key is never
    cached, so a key created a moment ago works at once; a revoked one stops working
    within `ttl` (GENQ_AUTH_CACHE_SECONDS)."""

    MAX_KEYS = 10_000

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._known: dict[str, tuple[Principal, float]] = {}

    def principal_of(self, key: str, session: Callable[[], Session]) -> Principal | None:
        digest = hash_key(key)
        known = self._known.get(digest)
        if known is not None and time.monotonic() < known[1]:
            return known[0]
        principal = authenticate(session(), key, digest)
        if principal is not None and self.ttl > 0:
            if len(self._known) >= self.MAX_KEYS:
                self._known.clear()
            self._known[digest] = (principal, time.monotonic() + self.ttl)
        return principal


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)))


def revoke_api_key(session: Session, prefix: str) -> None:
    revoked = session.execute(
        update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    ).rowcount
    if not revoked:
        raise NotFound(f"no active key with prefix {prefix!r}", field="prefix")


def has_any_key(session: Session) -> bool:
    return session.scalars(select(ApiKey.id).limit(1)).first() is not None
