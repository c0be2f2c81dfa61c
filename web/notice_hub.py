"""One Redis subscription per web process, fanned out to the event streams it serves.

A listener thread (started with the first stream) holds the process's only pub/sub
connection on `shared.notices.CHANNEL` and wakes each stream whose job a notice names
(a tenant's stream is woken by every notice and checks visibility when it re-reads).
A stream parks on its own condition between notices: it holds neither a database
connection nor a Redis one. When the subscription breaks (Redis restarted), the
listener reconnects and wakes every stream, which re-reads the ledger: notices missed
meanwhile cost nothing.
"""
from __future__ import annotations

import threading
import weakref

from shared.notices import CHANNEL, follow_channel

_hubs: "weakref.WeakSet[NoticeHub]" = weakref.WeakSet()


def close_all_streams() -> None:
    """The server is stopping: every stream of this process ends now (its client
    reconnects with Last-Event-ID to a server that is up) instead of holding the stop
    for gunicorn's graceful timeout."""
    for hub in list(_hubs):
        hub.closing = True
        hub.dispatch(None)


class Subscription:
    """What one stream waits on: notices for one job (`job_id`) or for any (None)."""

    def __init__(self, job_id: str | None):
        self.job_id = job_id
        self.opened_at = 0  # the hub's sequence when the stream opened
        self._condition = threading.Condition()
        self._jobs: set[str] = set()
        self._woken = False
        self._everything = False  # woken without ids (a reconnect): re-read it all

    def notify(self, job_ids: list[str] | None) -> None:
        with self._condition:
            if job_ids is None:
                self._everything = True
            else:
                self._jobs.update(job_ids)
            self._woken = True
            self._condition.notify()

    def wait(self, timeout: float) -> set[str] | None:
        """The ids noticed since the last call (waiting up to `timeout` for one); an empty
        set after a timeout; None when everything should be re-read (a reconnect)."""
        with self._condition:
            if not self._woken:
                self._condition.wait(timeout)
            jobs, everything = self._jobs, self._everything
            self._jobs, self._woken, self._everything = set(), False, False
        return None if everything else jobs


class NoticeHub:
    def __init__(self, redis_url: str):
        self._redis_url = redis_url
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sequence = 0  # notices dispatched so far
        self.closing = False
        _hubs.add(self)

    @property
    def sequence(self) -> int:
        """How many notices this process has dispatched: a read that begins after a
        stream was woken at sequence n saw everything that notice n announced."""
        with self._lock:
            return self._sequence

    def subscribe(self, job_id: str | None = None) -> Subscription:
        subscription = Subscription(job_id)
        with self._lock:
            self._subscriptions.add(subscription)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="genq-notices", daemon=True)
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def dispatch(self, job_ids: list[str] | None) -> None:
        """Wake the streams that `job_ids` concern (None: all of them)."""
        with self._lock:
            self._sequence += 1
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            if job_ids is None or subscription.job_id is None:
                subscription.notify(job_ids)
            elif subscription.job_id in job_ids:
                subscription.notify([subscription.job_id])

    def _listen(self) -> None:
        """Follow the channel while any stream is open; the next stream starts it again."""
        while True:
            follow_channel(self._redis_url, CHANNEL, self.dispatch, lambda: bool(self._subscriptions))
            with self._lock:
                if not self._subscriptions:
                    self._thread = None
                    return
