"""`Ledger`: one per process, built from one engine; each verb a worker or the reconciler
needs is one transaction of its own, so `worker/` tells its story without opening
sessions. (The web's views use the session-level functions: one transaction a request.)"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager

from sqlalchemy.orm import Session, sessionmaker

from shared.db import session_factory, transaction
from shared.ledger import claims, jobs, results
from shared.ledger.claims import Slice
from shared.orm import JobState


@dataclass(frozen=True)
class ResultRow:
    """One item's outcome as a worker stores it: text or an output key, or an error."""

    item_id: int
    text: str | None = None
    key: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Stored:
    succeeded: int = 0
    failed: int = 0
    lost: int = 0  # the lease was gone: dropped


class Ledger:
    def __init__(self, database_url: str | None = None, *, sessions: sessionmaker[Session] | None = None):
        self.sessions = sessions or session_factory(database_url)

    def transaction(self) -> ContextManager[Session]:
        return transaction(self.sessions)

    # --- claims ---------------------------------------------------------------------
    def claim(self, model: str, *, owner: str, max_items: int, lease_seconds: float, max_attempts: int) -> Slice | None:
        """Return expired leases, then take the next slice of `model`, in one transaction."""
        with self.transaction() as session:
            claims.release_expired_leases(session, max_attempts=max_attempts)
            return claims.claim_slice(session, model=model, owner=owner, max_items=max_items,
                                      lease_seconds=lease_seconds)

    def models_with_claimable_work(self) -> list[str]:
        with self.transaction() as session:
            return claims.models_with_claimable_work(session)

    def extend_lease(self, lease_id: str, lease_seconds: float) -> int:
        with self.transaction() as session:
            return claims.extend_lease(session, lease_id, lease_seconds)

    def release_expired_leases(self, max_attempts: int) -> int:
        with self.transaction() as session:
            return claims.release_expired_leases(session, max_attempts=max_attempts)

    # --- results --------------------------------------------------------------------
    def record_results(self, lease_id: str, rows: list[ResultRow]) -> Stored:
        """Every row of a micro-batch in one transaction, each conditional on the lease."""
        succeeded = failed = lost = 0
        with self.transaction() as session:
            for row in rows:
                if row.error is not None:
                    stored = results.record_item_failure(session, lease_id, row.item_id, row.error)
                    failed += stored
                else:
                    stored = results.record_item_success(session, lease_id, row.item_id, text=row.text, key=row.key)
                    succeeded += stored
                lost += not stored
        return Stored(succeeded, failed, lost)

    def release(self, slice_: Slice) -> int:
        with self.transaction() as session:
            return results.release_slice(session, slice_.lease_id)

    def abandon(self, slice_: Slice, *, error: str, max_attempts: int) -> int:
        with self.transaction() as session:
            return results.abandon_slice(session, slice_.lease_id, error=error, max_attempts=max_attempts)

    def time_out(self, slice_: Slice, error: str) -> int:
        with self.transaction() as session:
            return results.fail_held_items(session, slice_.lease_id, error)

    def cancelling_jobs(self, job_ids: list[str]) -> set[str]:
        with self.transaction() as session:
            return results.cancelling_jobs(session, job_ids)

    def indices_without_output(self, job_id: str) -> list[int]:
        with self.transaction() as session:
            return results.indices_without_output(session, job_id)

    # --- jobs -----------------------------------------------------------------------
    def settle(self, job_id: str) -> JobState | None:
        """In a transaction of its own, after the results are committed (see settle_job)."""
        with self.transaction() as session:
            return jobs.settle_job(session, job_id)

    def settle_all(self, job_ids: list[str]) -> list[str]:
        """Each of a slice's jobs that has no item left to run gets its final state, in
        one transaction after the results are committed; returns the jobs it settled."""
        with self.transaction() as session:
            return [job_id for job_id in job_ids if jobs.settle_job(session, job_id) is not None]

    def settle_unsettled(self) -> list[str]:
        """Jobs a crash left unsettled get their final state; returns their ids."""
        with self.transaction() as session:
            return [job_id for job_id in jobs.unsettled_job_ids(session) if jobs.settle_job(session, job_id)]
