"""The leases a dead pool process of this worker left behind, released by the next one
at its first wake-up (the dead one's own, which Celery requeues), instead of waiting
out GENQ_LEASE_SECONDS.

When a pool process dies mid-slice (the OOM killer, a segfault, SIGKILL), Celery starts
another and the slice's items stay leased to the dead one until the lease expires (60 s
by default) while the rest of the job runs on: the job's last items waited that long
(a 2,000-item demo-text job finished 73 s after its pool process was killed, of which
about 60 s waited on the lease). A lease names its holder, `<node name>:<pid>`; node
names are unique per worker and carry the host's name (`cpu@host`, `gpu0@host`), so a
starting pool process can tell its predecessors' leases and whether their process is
still there. Released as an expiry releases them: each item keeps the attempt it spent,
fails at the cap, and runs alone next (it may be what killed the process). Not at the
process's start: Celery gives a starting pool process 4 s to report, and a database
that is slow to answer must not fail the pool.
"""
from __future__ import annotations

import logging
import os

import psutil

log = logging.getLogger(__name__)


_checked_in: set[int] = set()  # the processes that have looked (a forked child has not)


def release_dead_predecessors_once(ctx) -> int:
    """`release_dead_predecessors`, the first time this process asks."""
    if os.getpid() in _checked_in:
        return 0
    _checked_in.add(os.getpid())
    return release_dead_predecessors(ctx)


def release_dead_predecessors(ctx) -> int:
    """Release the running items held by this worker's processes that are gone; wake
    the models that have work again. Returns how many items were released. Never raises:
    whatever it cannot do, the lease's expiry does later."""
    prefix = f"{ctx.name}:"
    try:
        dead = [owner for owner in ctx.ledger.lease_owners(prefix) if is_gone(owner[len(prefix):])]
        if not dead:
            return 0
        released = ctx.ledger.release_leases_of(dead, ctx.settings.max_attempts)
        log.warning("released %d item(s) held by dead process(es) %s of this worker", released, ", ".join(dead))
        ctx.wake_models_with_work()
        return released
    except Exception:
        log.exception("could not release the leases of this worker's dead processes; they expire instead")
        return 0


def is_gone(pid_text: str) -> bool:
    """Whether the process `pid_text` names has ended (a zombie has). Unsure (not a
    number, this process, another user's): not gone."""
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        return psutil.Process(int(pid_text)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False

