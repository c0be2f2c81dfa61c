"""web.quota.PendingQuota: every submit is checked against the tenant's pending items."""
import pytest

from shared.errors import QuotaExceeded
from web.quota import PendingQuota


def test_the_cap_is_exact_and_a_refusal_names_what_is_pending():
    quota, pending = PendingQuota(cap=10), [4]
    with pytest.raises(QuotaExceeded) as refused:
        quota.admit("acme", 7, lambda: pending[0])
    assert refused.value.retry_after == 30 and "4 pending items" in refused.value.message
    quota.admit("acme", 6, lambda: pending[0])  # exactly the cap


def test_items_run_since_the_last_submit_make_room_at_once():
    quota, pending = PendingQuota(cap=10), [9]
    with pytest.raises(QuotaExceeded):
        quota.admit("acme", 2, lambda: pending[0])
    pending[0] = 0  # a worker ran them
    quota.admit("acme", 2, lambda: pending[0])
