"""`Ledger`: one per process, built from one engine; each verb a worker or the reconciler
needs is one transaction of its own, so `worker/` tells its story without opening
sessions. (The web's views use the session-level functions: one transaction a request.)"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ContextManager

from sqlalchemy.orm import Session, sessionmaker

from shared import watch
from shared.db import session_factory, transaction
from shared.ledger import claims, counters, jobs, results
from shared.ledger.claims import Slice
from shared.ledger.results import ResultRow
from shared.orm import JobState


@dataclass(frozen=True)
class Stored:
    succeeded: int = 0
    failed: int = 0
    lost: int = 0  # the lease was gone: dropped
    ended: "Ended | None" = None  # the slice ended with these results (see `Ledger.record_results`)


class Ledger:
    def __init__(self, database_url: str | None = None, *, sessions: sessionmaker[Session] | None = None,
                 lease_check_seconds: float = 1.0):
        self.sessions = sessions or session_factory(database_url)
        self.lease_check_seconds = lease_check_seconds
        self._leases_checked_at = float("-inf")

    def transaction(self) -> ContextManager[Session]:
        return transaction(self.sessions)

    # --- claims ---------------------------------------------------------------------
    def claim(self, model: str, *, owner: str, max_items: int, lease_seconds: float, max_attempts: int) -> Slice | None:
        """Return expired leases (at most every `lease_check_seconds`: the reconciler
        does it too, and a burst of claims need not each look), then take the next slice
        of `model`, in one transaction."""
        expired = 0
        with self.transaction() as session:
            if time.monotonic() - self._leases_checked_at >= self.lease_check_seconds:
                expired = claims.release_expired_leases(session, max_attempts=max_attempts)
                self._leases_checked_at = time.monotonic()
            slice_ = claims.claim_slice(session, model=model, owner=owner, max_items=max_items,
                                        lease_seconds=lease_seconds)
        watch.leases_expired(expired)  # committed: counted for /metrics
        return slice_

    def models_with_claimable_work(self) -> list[str]:
        with self.transaction() as session:
            return claims.models_with_claimable_work(session)

    def extend_lease(self, lease_id: str, lease_seconds: float) -> int:
        with self.transaction() as session:
            return claims.extend_lease(session, lease_id, lease_seconds)

    def release_expired_leases(self, max_attempts: int) -> int:
        with self.transaction() as session:
            released = claims.release_expired_leases(session, max_attempts=max_attempts)
        watch.leases_expired(released)
        return released

    def lease_owners(self, prefix: str) -> list[str]:
        with self.transaction() as session:
            return claims.lease_owners(session, prefix)

    def release_leases_of(self, owners: list[str], max_attempts: int) -> int:
        with self.transaction() as session:
            released = claims.release_leases_of(session, owners, max_attempts=max_attempts)
        watch.leases_expired(released)
        return released

    # --- results --------------------------------------------------------------------
    def record_results(self, lease_id: str, rows: list[ResultRow], *, last_of: Slice | None = None) -> Stored:
        """Every row of a micro-batch in one transaction, each conditional on the lease.

        `last_of`: these are the last items `last_of` holds. When every one is stored,
        the slice has nothing left to give back, and its jobs are settled in this same
        transaction (`Stored.ended`; no `release` follows): safe because the counters
        this transaction moved hold their jobs' rows locked until it commits, so of two
        workers finishing one job the second sees the first's results (see
        `shared.ledger.counters`)."""
        with self.transaction() as session:
            succeeded, failed = results.record_results(session, lease_id, rows)
            ended = None
            if last_of is not None and succeeded + failed == len(rows):
                ended = _ended(session, last_of, 0)
        return Stored(succeeded, failed, len(rows) - succeeded - failed, ended)

    def release(self, slice_: Slice, *, holds_items: bool = True) -> "Ended":
        """A slice ran to its end: give back what it did not reach (if it `holds_items`
        still: none when every item's result was recorded), and settle its jobs."""
        with self.transaction() as session:
            given_back = results.release_slice(session, slice_.lease_id) if holds_items else 0
            return _ended(session, slice_, given_back)

    def abandon(self, slice_: Slice, *, error: str, max_attempts: int) -> "Ended":
        with self.transaction() as session:
            given_back = results.abandon_slice(session, slice_.lease_id, error=error, max_attempts=max_attempts)
            return _ended(session, slice_, given_back)

    def time_out(self, slice_: Slice, error: str) -> "Ended":
        with self.transaction() as session:
            results.fail_held_items(session, slice_.lease_id, error)
            return _ended(session, slice_, 0)

    def cancelling_jobs(self, job_ids: list[str]) -> set[str]:
        with self.transaction() as session:
            return results.cancelling_jobs(session, job_ids)

    # --- jobs -----------------------------------------------------------------------
    def settle(self, job_id: str) -> JobState | None:
        """In a transaction of its own, after the results are committed (see settle_job)."""
        with self.transaction() as session:
            return jobs.settle_job(session, job_id)

    def settle_all(self, job_ids: list[str]) -> dict[str, list[int]]:
        """Each of `job_ids` that has no item left to run gets its final state, in one
        transaction after the results are committed; returns the jobs it settled, each
        with the indices of its items that have no output (see `Ended.settled`)."""
        with self.transaction() as session:
            return _settled_with_missing_outputs(session, job_ids)

    def settle_unsettled(self) -> dict[str, list[int]]:
        """Jobs a crash left unsettled get their final state; returns them as settle_all
        does. Their items, not their counters, said they are done: they are counted
        again first, so that a counter gone wrong cannot keep a job open for good."""
        with self.transaction() as session:
            job_ids = jobs.unsettled_job_ids(session)
            counters.recount(session.connection(), job_ids)
            return _settled_with_missing_outputs(session, job_ids)


@dataclass(frozen=True)
class Ended:
    """How a slice ended: items given back to pending (another worker should be woken),
    and the jobs it settled, each with the indices of its items that have no output (a
    worker that died between writing a file and committing its row left a file there)."""

    given_back: int
    settled: dict[str, list[int]]


def _ended(session: Session, slice_: Slice, given_back: int) -> Ended:
    """Settling in the transaction that gives the slice back is safe: every result of this
    slice was committed before, and what it gives back only makes a job stay open."""
    return Ended(given_back, _settled_with_missing_outputs(session, slice_.job_ids))


def _settled_with_missing_outputs(session: Session, job_ids: list[str]) -> dict[str, list[int]]:
    settled = jobs.settle_jobs(session, job_ids)
    missing: dict[str, list[int]] = {job_id: [] for job_id in settled}
    partial = [job_id for job_id, state in settled.items() if state != JobState.SUCCEEDED]  # the others have every output
    for job_id, index in results.indices_without_output(session, partial):
        missing[job_id].append(index)
    return missing
