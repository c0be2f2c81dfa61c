"""`Idempotency-Key` on POST /v1/jobs: a repeated key with the same body returns the
first job; the same key with a different body is a 409."""
from __future__ import annotations

import hashlib
import json
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import Conflict, InvalidRequest
from shared.orm import Job

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# No control characters, and at least one character that is not a space. The OpenAPI
# document declares this very pattern, so the server and its contract cannot disagree.
KEY_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"
_KEY = re.compile(KEY_PATTERN.replace("$", "\\Z"))


def key_from(headers) -> str | None:
    key = headers.get(HEADER)
    if key is None:
        return None
    if len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
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
