"""The committer's contract: one commit in flight, in order, in its own thread; a
commit's error raised in the slice's thread; a slice's own error raised over it."""
from __future__ import annotations

import threading
import time

import pytest

from worker.committer import Committer


def test_commits_run_in_a_thread_one_at_a_time_in_order():
    committer, done = Committer(), []

    def commit(n: int) -> None:
        time.sleep(0.05)
        done.append((n, threading.current_thread() is not threading.main_thread()))

    committer.submit(commit, 1)
    assert done == []  # the caller goes on while the commit runs
    committer.submit(commit, 2)  # waits for the first
    assert done == [(1, True)]
    committer.wait()
    assert done == [(1, True), (2, True)]


def test_a_failed_commit_is_raised_at_the_next_submit_or_wait():
    committer, done = Committer(), []

    def fail() -> None:
        raise RuntimeError("database gone")

    committer.submit(fail)
    with pytest.raises(RuntimeError, match="database gone"):
        committer.submit(done.append, 1)
    assert done == []  # the commit after a failed one is not made
    committer.submit(fail)
    with pytest.raises(RuntimeError, match="database gone"):
        committer.wait()
    committer.wait()  # raised once


def test_a_block_ends_with_its_commits_landed_and_its_own_error_wins(caplog):
    committer, done = Committer(), []
    with committer.in_order():
        committer.submit(lambda: (time.sleep(0.05), done.append("landed")))
    assert done == ["landed"]

    def fail() -> None:
        time.sleep(0.05)
        raise RuntimeError("commit failed")

    with pytest.raises(ValueError, match="model failed"), committer.in_order():
        committer.submit(fail)
        raise ValueError("model failed")
    assert "a result commit failed while its slice broke off" in caplog.text


def test_work_queued_behind_a_commit_runs_after_it_and_keeps_its_own_error():
    committer, done = Committer(), []
    committer.submit(lambda: (time.sleep(0.05), done.append("commit")))
    claim = committer.then(lambda: done.append("claim") or 1 / 0)
    assert done == []  # the caller did not wait for the commit
    committer.wait()  # the claim's error is its future's, not the commits'
    assert done == ["commit", "claim"] and isinstance(claim.exception(), ZeroDivisionError)
