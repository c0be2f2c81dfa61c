"""shared.ledger.tenant_pending: a tenant's pending total follows its jobs' pending
counters through every change the ledger makes, alone and under concurrent writers."""
from __future__ import annotations

import threading
from datetime import timedelta

from shared import ledger
from shared.db import session_scope
from shared.ledger import Ledger, ResultRow, tenant_pending
from shared.orm import Job, JobItem, utcnow
from tests.helpers.ledger import tenants_with_wrong_pending_totals


def submit(url, tenant: str, n: int, model: str = "m") -> str:
    with session_scope(url) as session:
        return ledger.submit_job(session, model=model, task="text-generation", params={"max_new_tokens": 4},
                                 inputs=[(f"p{i}", i) for i in range(n)], tenant=tenant).id


def totals(url) -> dict[str, int]:
    with session_scope(url) as session:
        assert tenants_with_wrong_pending_totals(session) == {}
        return {tenant: tenant_pending.of_tenant(session.connection(), tenant) for tenant in ("t", "u", "nobody")}


def test_a_tenants_pending_total_follows_its_jobs_through_every_change(database_url):
    book = Ledger(database_url)
    claim = dict(lease_seconds=60, max_attempts=2)
    first, one_item = submit(database_url, "t", 5), submit(database_url, "t", 1, model="other")
    submit(database_url, "u", 3)
    assert totals(database_url) == {"t": 6, "u": 3, "nobody": 0}

    slices = [book.claim("m", owner="w", max_items=2, **claim) for _ in range(3)]  # whose turn: t, then u, then t
    assert [len(s.items) for s in slices] == [2, 2, 2] and totals(database_url) == {"t": 2, "u": 1, "nobody": 0}
    book.record_results(slices[0].lease_id, [ResultRow(slices[0].items[0].id, text="ok", job_id=first)])
    book.release(slices[1])  # given back
    book.abandon(slices[2], error="the model raised", max_attempts=2)  # attempts kept: pending again
    assert totals(database_url) == {"t": 4, "u": 3, "nobody": 0}

    with session_scope(database_url) as session:  # slice 0's other item: its lease expires
        session.query(JobItem).filter(JobItem.lease_id == slices[0].lease_id).update(
            {JobItem.lease_expires_at: utcnow() - timedelta(hours=1)})
    assert book.release_expired_leases(max_attempts=2) == 1
    assert totals(database_url) == {"t": 5, "u": 3, "nobody": 0}

    with session_scope(database_url) as session:
        ledger.cancel_jobs(session, [first])
    assert totals(database_url) == {"t": 1, "u": 3, "nobody": 0}

    single = book.claim("other", owner="w", max_items=4, **claim)
    book.record_results(single.lease_id, [ResultRow(single.items[0].id, error="bad prompt", job_id=one_item)],
                        last_of=single)
    assert totals(database_url) == {"t": 0, "u": 3, "nobody": 0}
    with session_scope(database_url) as session:
        assert ledger.retry_job(session, session.get(Job, one_item)) == 1
    assert totals(database_url) == {"t": 1, "u": 3, "nobody": 0}


def test_concurrent_submits_and_claims_of_one_tenant_keep_its_total(database_url):
    """On PostgreSQL the writers run at once, each moving one of the tenant's shards: no
    move is lost and none waits for another in a cycle (a deadlock would raise here)."""
    book, errors = Ledger(database_url), []

    def submitter():
        try:
            for _ in range(40):
                submit(database_url, "t", 1)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    def worker(owner: str):
        try:
            for _ in range(40):
                slice_ = book.claim("m", owner=owner, max_items=3, lease_seconds=60, max_attempts=3)
                if slice_ is not None:
                    book.record_results(slice_.lease_id, [ResultRow(item.id, text="ok", job_id=item.job_id)
                                                          for item in slice_.items[:-1]])
                    book.release(slice_)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    threads += [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_scope(database_url) as session:
        pending = sum(job.pending_items for job in session.query(Job).filter(Job.tenant == "t"))
    assert 0 < pending < 160 and totals(database_url)["t"] == pending
