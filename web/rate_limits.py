"""Requests per API key (GENQ_RATE_LIMIT), counted in Redis so that every web process
shares them: a fixed window per key, aligned to the clock (`limits.parse` reads the rate).

A round trip per request cost a submit 8 % of its CPU in the web and a status poll 12 %
(SQLite; 26 % and 21 % on PostgreSQL: in process, blocks of 1 against 16, alternated),
and under load each reply from Redis waits for the GIL again. So a web process takes the
window's requests from Redis in blocks (`INCRBY`) of up to GENQ_RATE_LIMIT_BLOCK, and
spends them without asking again. The count in Redis is never below what was admitted:
a key never gets more than its rate per window, whichever processes serve it. What a
block costs is the other way: requests a process took and did not spend are refused to
the others until the window ends. A block is never more than a sixteenth of what was
left of the window when it was taken, so near the limit blocks shrink to one request
and little is held idle. A small rate (below 16 per window) is counted request by
request, as before. Windows are read from each host's clock: where web hosts' clocks
differ by s seconds, they disagree by s seconds on when a window ends, and a key that
used up its window may get its next window's requests s seconds early.

If Redis is down, requests are not limited: a submit must still be accepted and stored."""
from __future__ import annotations

import logging
import math
import threading
import time

import redis
from flask import Flask, request
from limits import parse
from werkzeug.exceptions import TooManyRequests

from shared.errors import ConfigError
from shared.queue import redis_client
from web.auth import rate_limit_key

log = logging.getLogger(__name__)

COUNTER = "genq:rate:{key}:{window}"
SHARE_OF_WHAT_IS_LEFT = 16  # a block is at most 1/16 of the window's requests not yet taken
MAX_KEYS_REMEMBERED = 10_000


class Allowance:
    """What this process holds of one key's window: requests taken from Redis and not yet
    spent, and the key's count in Redis when it last asked (how much the window had left)."""

    __slots__ = ("window", "left", "counted")

    def __init__(self, window: int):
        self.window, self.left, self.counted = window, 0, 0


class RateLimits:
    def __init__(self, redis_url: str, rate: str, blueprints: set[str], block: int):
        try:
            item = parse(rate)
        except ValueError:
            raise ConfigError(f"GENQ_RATE_LIMIT={rate!r} is not a rate such as 1200/minute or 20/second") from None
        self.rate, self.limit, self.period = str(item), item.amount, item.get_expiry()
        self.block = max(1, block)
        self.blueprints = blueprints
        self.redis = redis_client(redis_url, timeout=1)
        self._held: dict[str, Allowance] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        """Count this request against its key; a 429 with Retry-After (the window's end)
        once the key has used its rate."""
        if request.blueprint not in self.blueprints:
            return
        key, now = rate_limit_key(), time.time()
        window = int(now // self.period)
        wanted = self._spend_held(key, window)
        if not wanted:
            return
        try:
            if self._take_block(key, window, wanted):
                return
        except (redis.RedisError, OSError) as exc:
            log.warning("rate limit not counted (Redis: %s)", exc)
            return
        retry_after = max(1, math.ceil((window + 1) * self.period - now))
        raise TooManyRequests(f"rate limit exceeded: {self.rate} per API key", retry_after=retry_after)

    def _spend_held(self, key: str, window: int) -> int:
        """Spend one of the requests this process holds of the key's window (0), or say
        how many to take from Redis: at most `block`, and a sixteenth of what the window
        had left when this process last asked."""
        with self._lock:
            held = self._held.get(key)
            current = held is not None and held.window == window
            if current and held.left:
                held.left -= 1
                return 0
            counted = held.counted if current else 0
        return max(1, min(self.block, (self.limit - counted) // SHARE_OF_WHAT_IS_LEFT))

    def _take_block(self, key: str, window: int, wanted: int) -> bool:
        """Take `wanted` requests of the key's window in Redis (one round trip) and spend
        one of them on this request; False when the window has nothing left."""
        counter = COUNTER.format(key=key, window=window)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrby(counter, wanted)
        pipe.expire(counter, math.ceil(self.period) + 1)  # the window's own key: gone once it has passed
        counted = pipe.execute()[0]
        granted = max(0, min(wanted, self.limit - (counted - wanted)))
        with self._lock:
            held = self._allowance(key, window)
            held.counted = max(held.counted, counted)
            held.left += max(0, granted - 1)
        return granted > 0

    def _allowance(self, key: str, window: int) -> Allowance:
        """The key's allowance in `window` (under the lock); older windows' are dropped."""
        held = self._held.get(key)
        if held is None or held.window != window:
            if held is None and len(self._held) >= MAX_KEYS_REMEMBERED:
                self._held = {k: a for k, a in self._held.items() if a.window == window and a.left}
            held = self._held[key] = Allowance(window)
        return held


def init_rate_limits(app: Flask, redis_url: str, rate: str, blueprints: set[str], block: int) -> RateLimits:
    limits = RateLimits(redis_url, rate, blueprints, block)
    app.before_request(limits.check)
    return limits
