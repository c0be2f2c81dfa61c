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


def test_a_follower_resubscribes_after_redis_restarts_and_says_to_reread(tmp_path):
    """The one subscription loop of the web's notice hub and the batch finalizer: a
    restart loses the subscription; the follower comes back and says so with None."""
    import time

    from genq.devstack import RedisServer
    from shared.notices import CHANNEL, follow_channel

    server = RedisServer(tmp_path / "redis").start()
    seen, stop = [], threading.Event()
    thread = threading.Thread(target=follow_channel, daemon=True,
                              args=(server.url, CHANNEL, seen.append, lambda: not stop.is_set()))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while seen != [None] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == [None]  # subscribed
        server.stop()
        server.start()  # the same port, nothing remembered
        deadline = time.monotonic() + 15
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == [None, None]  # subscribed again: re-read everything
        Notices(server.url).publish(["job-a", "job-b"])
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen[2:] == [["job-a", "job-b"]]
    finally:
        stop.set()
        thread.join(5)
        server.stop()
    assert not thread.is_alive()
