"""Notices of settled jobs wake a listener (`follow_settled`); notices of any other
change to the ledger do not."""
from __future__ import annotations

import threading

from shared.notices import Notices, follow_settled


def test_a_settled_notice_wakes_the_listener_and_a_plain_notice_does_not(redis_server):
    wake, stop = threading.Event(), threading.Event()
    thread = follow_settled(redis_server.url, wake, stop)
    try:
        assert wake.wait(5)  # subscribed: the listener looks at the ledger once
        wake.clear()
        notices = Notices(redis_server.url)
        notices.publish(["job-a"])  # a micro-batch's commit
        assert not wake.wait(0.3)
        notices.publish_ended(["job-a"], [])  # a slice ended, nothing settled: nothing sent there
        assert not wake.wait(0.3)
        notices.publish_ended(["job-a", "job-b"], ["job-a"])
        assert wake.wait(5)
    finally:
        stop.set()
    thread.join(5)
    assert not thread.is_alive()
