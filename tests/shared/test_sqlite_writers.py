"""SQLite's writers queue for the one write lock: a waiter gets in the moment the holder
commits, in this process or another, and gives up at its deadline."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db import dispose_engines, session_factory, session_scope, transaction
from shared.sqlite_writers import NestedWriteTransaction, WriterQueue

HOLD_SECONDS = 0.44  # SQLite's busy handler, polling, would let the waiter in at 0.528 s


def hold_write_lock(url: str, seconds: float, taken: threading.Event | None = None) -> float:
    """A write transaction held open `seconds`; returns when it committed (monotonic)."""
    with session_scope(url) as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        if taken is not None:
            taken.set()
        time.sleep(seconds)
    return time.monotonic()


def begin_write(url: str) -> float:
    """When (monotonic) a write transaction of this thread got the lock."""
    with session_scope(url) as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
        return time.monotonic()


def test_a_sqlite_writer_waiting_on_another_thread_gets_in_when_it_commits(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    taken, committed = threading.Event(), []
    holder = threading.Thread(target=lambda: committed.append(hold_write_lock(url, HOLD_SECONDS, taken)))
    holder.start()
    assert taken.wait(10)
    got_in = begin_write(url)
    holder.join()
    dispose_engines()
    assert got_in - committed[0] < 0.04, f"the waiter got in {1000 * (got_in - committed[0]):.0f} ms after the commit"


HOLDER = """
import sys, time
from sqlalchemy import text
from shared.db import session_scope
with session_scope(sys.argv[1]) as session:
    session.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
    print("taken", flush=True)
    time.sleep(float(sys.argv[2]))
print(time.monotonic(), flush=True)
"""


def test_a_sqlite_writer_waiting_on_another_process_gets_in_when_it_commits(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(HOLD_SECONDS)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert holder.stdout.readline().strip() == "taken"
    got_in = begin_write(url)
    committed = float(holder.stdout.readline())
    assert holder.wait(10) == 0
    dispose_engines()
    assert got_in - committed < 0.04, f"the waiter got in {1000 * (got_in - committed):.0f} ms after the commit"


def test_a_sqlite_reader_does_not_queue_behind_a_writer(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    hold_write_lock(url, 0)  # creates the table
    taken = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(url, 1.0, taken))
    holder.start()
    assert taken.wait(10)
    started = time.monotonic()
    with transaction(session_factory(url, read_only=True)) as session:
        assert session.scalar(text("SELECT count(*) FROM t")) >= 0
    assert time.monotonic() - started < 0.5
    holder.join()
    dispose_engines()


def test_a_new_writer_queue_is_not_reset_by_its_first_writers(tmp_path):
    """Only a forked child starts a queue afresh: threads of the process that made it,
    taking it for the first time at once, each used to put in a mutex of their own (two
    writers let in together, then `release unlocked lock` at a commit)."""
    queue = WriterQueue(str(tmp_path / "q.db-writer.lock"))
    mutex = queue._mutex
    assert queue.acquire(1)
    assert queue._mutex is mutex
    queue.release()


def test_a_second_sqlite_write_transaction_of_one_thread_fails_at_once(tmp_path):
    """It could never get in (its thread holds the first one open): it used to wait for
    the queue, then for SQLite's busy timeout, a minute in all, then fail."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    hold_write_lock(url, 0)  # creates the table
    started = time.monotonic()
    with session_scope(url) as outer:
        outer.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(NestedWriteTransaction, match="commit it before"):
            with session_scope(url) as inner:
                inner.execute(text("INSERT INTO t VALUES (2)"))
    assert time.monotonic() - started < 5
    begin_write(url)  # the queue is free again
    with transaction(session_factory(url, read_only=True)) as session:
        assert session.scalar(text("SELECT count(*) FROM t")) == 2
    dispose_engines()


FLOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("taken", flush=True)
sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
print(time.monotonic(), flush=True)
sys.stdin.readline()
"""


def test_a_writer_gives_up_at_its_deadline_and_leaves_the_queue_to_the_next(tmp_path):
    """A waiter that gave up on another process's lock must leave neither this process's
    turn nor the flock taken for nobody: every later writer would then wait it out."""
    path = str(tmp_path / "q.db-writer.lock")
    holder = subprocess.Popen([sys.executable, "-c", FLOCK_HOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "taken"
        queue = WriterQueue(path)
        started = time.monotonic()
        assert queue.acquire(0.3) is False
        assert 0.25 < time.monotonic() - started < 2
        holder.stdin.write("release\n")
        holder.stdin.flush()
        released = float(holder.stdout.readline())
        assert queue.acquire(5)  # the next writer of this process gets it
        got_in = time.monotonic()
        queue.release()
        assert got_in - released < 0.04, f"got in {1000 * (got_in - released):.0f} ms after the release"
        # and, released, it is free for another process again
        other = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", path], timeout=30)
        assert other.returncode == 0
    finally:
        holder.kill()
        holder.wait()


QUEUE_LOOP = """
import sys
from tests.shared.test_sqlite_writers import hold_turns
print("ready", flush=True)
hold_turns(sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def hold_turns(lock_path: str, probe_path: str, turns: int, queue: WriterQueue | None = None) -> None:
    """Take the queue's turn `turns` times; during each, an flock of its own on
    `probe_path` that fails at once if another holder of the turn has one."""
    queue = queue or WriterQueue(lock_path)
    for _ in range(turns):
        assert queue.acquire(10)
        probe = os.open(probe_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: two hold the turn
            time.sleep(0.0005)
        finally:
            os.close(probe)
            queue.release()


def test_threads_of_one_process_and_another_process_take_turns_and_never_hold_one_together(tmp_path):
    lock_path, probe_path = str(tmp_path / "q.db-writer.lock"), str(tmp_path / "probe")
    other = subprocess.Popen([sys.executable, "-c", QUEUE_LOOP, lock_path, probe_path, "300"],
                             cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "ready"
    queue, errors = WriterQueue(lock_path), []

    def turns() -> None:
        try:
            hold_turns(lock_path, probe_path, 150, queue)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=turns) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert other.wait(60) == 0
    assert errors == []
