"""The per-tenant cap on pending items (GENQ_MAX_PENDING_ITEMS_PER_TENANT), checked at
every submit against the tenant's pending total, which the ledger keeps beside its jobs'
counters (`shared.ledger.tenant_pending`): a read of a few rows, whatever the tenant has
queued. The check is not a lock: two submits checked at once can both pass it.
"""
from __future__ import annotations

from typing import Callable

from shared.errors import QuotaExceeded

RETRY_AFTER_SECONDS = 30


class PendingQuota:
    def __init__(self, cap: int):
        self.cap = cap

    def admit(self, tenant: str, new_items: int, count: Callable[[], int]) -> None:
        """Raise QuotaExceeded when `new_items` more would pass the cap; `count()` reads
        the tenant's pending items."""
        pending = count()
        if pending + new_items > self.cap:
            raise QuotaExceeded(
                f"tenant {tenant!r} has {pending} pending items; {new_items} more would pass the limit of "
                f"{self.cap}. Retry when some have run.", field="prompts", retry_after=RETRY_AFTER_SECONDS)
