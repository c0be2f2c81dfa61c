"""`Idempotency-Key` on POST /v1/jobs: a repeated key with the same body returns the
first job; the same key with a different body is a 409."""
from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import Conflict, InvalidRequest
from shared.orm import Job

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def key_from(headers) -> str | None:
    key = headers.get(HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidRequest(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters", field=HEADER)
    return key


def fingerprint(body: object) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(session: Session, tenant: str, key: str, body_fingerprint: str) -> Job | None:
    """The tenant's job first created with `key`, if any; a different body is a conflict."""
    job = session.scalars(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)).first()
    if job is not None and job.request_hash != body_fingerprint:
        raise Conflict(f"{HEADER} {key!r} was already used with a different request body", field=HEADER)
    return job
