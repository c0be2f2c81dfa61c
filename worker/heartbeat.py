"""The lease heartbeat: one daemon thread per worker process extends the leases of
the slices that process is running, so a short lease (quick recovery after a crash)
never expires under a live worker. One thread for the life of the process, rather
than one per slice, keeps a slice of one item from paying a thread's start and join."""
from __future__ import annotations

import logging
import os
import threading
import time

from shared.ledger import Ledger

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, ledger: Ledger, interval: float, lease_seconds: float):
        self._ledger = ledger
        self._interval = interval
        self._lease_seconds = lease_seconds
        self._leases: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def hold(self, lease_id: str) -> None:
        """Extend `lease_id` every `interval` seconds until `let_go` (where its slice ends,
        in whichever thread that is: worker.slices.end_slice)."""
        self._start_in_this_process()
        with self._lock:
            self._leases.add(lease_id)

    def let_go(self, lease_id: str) -> None:
        with self._lock:
            self._leases.discard(lease_id)

    def _start_in_this_process(self) -> None:
        """Threads do not survive a fork: a pool child starts its own on first use."""
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._leases = set()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while True:  # a daemon thread: it ends with its process
            time.sleep(self._interval)
            with self._lock:
                leases = list(self._leases)
            for lease_id in leases:
                try:
                    self._ledger.extend_lease(lease_id, self._lease_seconds)
                except Exception as exc:  # a missed beat is retried at the next one
                    log.warning("lease heartbeat failed: %s", exc)
