"""The ledger: every state change of jobs and items happens in this package, and nowhere else.

    job:  queued -> running -> succeeded | failed | cancelled
                    running -> cancelling -> cancelled
    item: pending -> running -> succeeded | failed | cancelled
                     running -> pending   (slice released, or lease expired)

A job whose items partly failed ends `failed`; its finished items stay downloadable
and its failed items can be retried alone.

Writes by a worker are conditional on the lease it holds (`lease_id`): a worker whose
lease expired and whose items were claimed again cannot write a second result.
The functions of `jobs`, `claims` and `results` take a session and do not commit: the
caller decides the transaction (the web's views commit once per request). A worker
process uses a `Ledger` (`transactions`) instead, whose verbs each own one transaction.
"""
from __future__ import annotations

from shared.ledger.claims import (
    ClaimedItem,
    Slice,
    claim_slice,
    extend_lease,
    has_claimable_work,
    lease_owners,
    models_with_claimable_work,
    release_expired_leases,
    release_leases_of,
)
from shared.ledger.jobs import (
    OPEN_JOB_STATES,
    UNFINISHED_JOB_STATES,
    Counts,
    Submitted,
    batch_key,
    cancel_job,
    cancel_jobs,
    create_job,
    item_counts,
    new_id,
    retry_job,
    settle_job,
    submit_job,
    unsettled_job_ids,
)
from shared.ledger.results import (
    abandon_slice,
    cancelling_jobs,
    fail_held_items,
    indices_without_output,
    record_item_failure,
    record_item_success,
    release_slice,
)
from shared.ledger.transactions import Ledger, ResultRow

__all__ = [
    "OPEN_JOB_STATES", "UNFINISHED_JOB_STATES", "ClaimedItem", "Counts", "batch_key", "Ledger", "ResultRow", "Slice",
    "Submitted", "abandon_slice", "cancel_job", "cancel_jobs", "cancelling_jobs", "claim_slice", "create_job", "extend_lease", "fail_held_items",
    "has_claimable_work", "indices_without_output", "item_counts", "lease_owners", "models_with_claimable_work",
    "new_id", "record_item_failure", "record_item_success", "release_expired_leases", "release_leases_of",
    "release_slice", "retry_job", "settle_job", "submit_job", "unsettled_job_ids",
]
