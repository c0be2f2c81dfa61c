"""How far a running item is inside the model: `step`/`steps` for diffusion, `tokens` for
text.

It lives in Redis, not in the ledger: a denoising step or a token every few milliseconds
would be a database write each, for a figure that is stale a second later and worthless
after the item ends. A tracker writes at most once every `interval` seconds (one HSET on
the job's hash, the item's index as the field); the hash expires `ttl` seconds after its
last write, so a worker that dies leaves nothing behind for long, and the fields of a
micro-batch are removed when it ends. A reader gets every running item of a job with one
HGETALL. Progress is advice: a Redis that is down costs the figure, never the work.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Iterable, Protocol

import redis

log = logging.getLogger(__name__)

KEY = "genq:progress:{job_id}"


class Progress(Protocol):
    """What a runner calls at each denoising step (`step`, `steps`) or token (`tokens`)."""

    def __call__(self, *, step: int | None = None, steps: int | None = None, tokens: int | None = None) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ItemProgress:
    index: int
    step: int | None = None
    steps: int | None = None
    tokens: int | None = None
    updated_at: float = 0.0  # seconds since the epoch


class ProgressBoard:
    def __init__(self, client: redis.Redis, *, interval: float = 0.5, ttl: float = 120.0):
        self.redis = client
        self.interval = interval
        self.ttl = max(1, round(ttl))

    def tracker(self, items: Iterable[object]) -> "Tracker":
        """A tracker for one micro-batch: every item in it is at the same step. Items
        without a job (a runner called outside a slice) are not tracked."""
        fields: dict[str, list[int]] = {}
        for item in items:
            job_id, index = getattr(item, "job_id", None), getattr(item, "index", None)
            if job_id is not None and index is not None:
                fields.setdefault(job_id, []).append(index)
        return Tracker(self, fields) if fields else NO_PROGRESS

    def write(self, fields: dict[str, list[int]], value: dict) -> None:
        payload = json.dumps({**value, "at": round(time.time(), 3)})
        pipe = self.redis.pipeline(transaction=False)
        for job_id, indices in fields.items():
            key = KEY.format(job_id=job_id)
            pipe.hset(key, mapping={str(index): payload for index in indices})
            pipe.expire(key, self.ttl)
        pipe.execute()

    def clear(self, fields: dict[str, list[int]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for job_id, indices in fields.items():
            pipe.hdel(KEY.format(job_id=job_id), *(str(index) for index in indices))
        pipe.execute()

    def read(self, job_id: str) -> list[ItemProgress]:
        """The job's items with progress, by index (empty when Redis does not answer)."""
        try:
            raw = self.redis.hgetall(KEY.format(job_id=job_id))
        except redis.RedisError as exc:
            log.warning("could not read progress of job %s: %s", job_id, exc)
            return []
        out = []
        for field, payload in raw.items():
            try:
                value = json.loads(payload)
                out.append(ItemProgress(index=int(field), step=_count(value.get("step")),
                                        steps=_count(value.get("steps")) or None, tokens=_count(value.get("tokens")),
                                        updated_at=float(value.get("at", 0.0))))
            except (ValueError, TypeError, AttributeError):
                continue
        return sorted(out, key=lambda progress: progress.index)


def _count(value) -> int | None:
    """A whole, non-negative number as written (or None)."""
    return None if value is None else max(0, int(value))


class Tracker:
    """Called by a runner at each step or token; writes at most every `interval` seconds
    (a value within the interval is dropped, never written later). `close`, when the
    micro-batch ends, removes its fields."""

    def __init__(self, board: ProgressBoard, fields: dict[str, list[int]]):
        self.board, self.fields = board, fields
        self._written_at = float("-inf")

    def __call__(self, *, step: int | None = None, steps: int | None = None, tokens: int | None = None) -> None:
        now = time.monotonic()
        if now - self._written_at < self.board.interval:
            return
        self._written_at = now
        value = {"tokens": tokens} if tokens is not None else {"step": step, "steps": steps}
        self._quietly(self.board.write, value)

    def close(self) -> None:
        self._quietly(self.board.clear)

    def _quietly(self, write, *args) -> None:
        try:
            write(self.fields, *args)
        except redis.RedisError as exc:  # advice only: the next call tries again
            log.warning("could not write progress: %s", exc)


class _NoProgress:
    """The tracker of a runner that reports to nobody."""

    def __call__(self, **_progress) -> None:
        return None

    def close(self) -> None:
        return None


NO_PROGRESS = _NoProgress()
