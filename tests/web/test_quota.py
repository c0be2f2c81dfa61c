"""web.quota.PendingQuota: exact near the cap, a remembered count far from it."""
import pytest

from shared.errors import QuotaExceeded
from web.quota import PendingQuota


class Ledger:
    """Counts how often the quota reads the pending items, and what it reads."""

    def __init__(self, pending: int = 0):
        self.pending, self.reads = pending, 0

    def count(self) -> int:
        self.reads += 1
        return self.pending


def test_far_from_the_cap_a_count_is_reused_with_what_was_accepted_since():
    quota, ledger = PendingQuota(cap=100, ttl=60), Ledger()
    for _ in range(10):
        quota.admit("acme", 4, ledger.count)
        ledger.pending += 4
    assert ledger.reads == 1  # 40 accepted on one count: under half the cap all along


def test_near_the_cap_every_submit_counts_and_the_cap_is_exact():
    quota, ledger = PendingQuota(cap=10, ttl=60), Ledger()
    quota.admit("acme", 4, ledger.count)
    ledger.pending += 4
    with pytest.raises(QuotaExceeded) as refused:
        quota.admit("acme", 7, ledger.count)
    assert refused.value.retry_after == 30 and "4 pending items" in refused.value.message
    assert ledger.reads == 2
    quota.admit("acme", 6, ledger.count)  # exactly the cap
    assert ledger.reads == 3


def test_items_claimed_elsewhere_are_seen_at_the_next_count():
    quota, ledger = PendingQuota(cap=10, ttl=60), Ledger(pending=9)
    with pytest.raises(QuotaExceeded):
        quota.admit("acme", 2, ledger.count)
    ledger.pending = 0  # a worker ran them
    quota.admit("acme", 2, ledger.count)


def test_a_count_older_than_ttl_is_read_again(monkeypatch):
    import web.quota

    now = [1000.0]
    monkeypatch.setattr(web.quota.time, "monotonic", lambda: now[0])
    quota, ledger = PendingQuota(cap=1000, ttl=1.0), Ledger()
    quota.admit("acme", 1, ledger.count)
    now[0] += 0.5
    quota.admit("acme", 1, ledger.count)
    assert ledger.reads == 1
    now[0] += 1.0
    quota.admit("acme", 1, ledger.count)
    assert ledger.reads == 2


def test_tenants_are_counted_apart_and_ttl_zero_always_counts():
    quota, ledger = PendingQuota(cap=1000, ttl=60), Ledger()
    quota.admit("acme", 1, ledger.count)
    quota.admit("globex", 1, ledger.count)
    assert ledger.reads == 2
    always, ledger = PendingQuota(cap=1000, ttl=0), Ledger()
    for _ in range(3):
        always.admit("acme", 1, ledger.count)
    assert ledger.reads == 3
