"""A one-line progress bar for `genq submit --wait`: items done/total, rate, ETA."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30):
        self.total = max(total, 1)
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self._first_done: tuple[float, int] | None = None

    def line(self, done: int, state: str, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if self._first_done is None and done > 0:
            self._first_done = (now, done)
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self._rate(done, now)
        eta = format_duration((self.total - done) / rate) if rate else "?"
        rate_text = f"{rate:.1f} items/s" if rate else "- items/s"
        return f"[{bar}] {done}/{self.total} {state:<10} {rate_text}  ETA {eta}  elapsed {format_duration(now - self.started)}"

    def _rate(self, done: int, now: float) -> float | None:
        """Items per second since the first items finished (model loading is not counted);
        while everything so far finished at once, the rate since submission."""
        if self._first_done is None:
            return None
        first_at, first_done = self._first_done
        if done <= first_done or now <= first_at:
            return done / (now - self.started) if now > self.started else None
        return (done - first_done) / (now - first_at)

    def update(self, done: int, state: str) -> None:
        self.stream.write("\r" + self.line(done, state))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
