"""SQLite's writers, queued for its one write lock: threads of a process on a mutex, one
thread per process at a time on an flock that the kernel hands over between processes.

It is only a queue: SQLite's lock still guards the data (a writer that waited past its
timeout goes on to BEGIN IMMEDIATE and SQLite's busy handler).
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time


class QueuedConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions hold this database's `WriterQueue`
    from BEGIN IMMEDIATE to COMMIT or ROLLBACK (or close)."""

    writers: "WriterQueue | None" = None
    _queued = False

    def queue_for_write(self, timeout: float) -> None:
        if self.writers is not None and not self._queued:
            self._queued = self.writers.acquire(timeout)

    def leave_write_queue(self) -> None:
        if self._queued:
            self._queued = False
            self.writers.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_write_queue()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_write_queue()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_write_queue()


class NestedWriteTransaction(RuntimeError):
    """A thread began a SQLite write transaction while its own earlier one was open."""


class WriterQueue:
    """Writers of one SQLite file wait here for its one write lock, and are let in the
    moment it is free. SQLite's own busy handler polls instead, sleeping 1, 2, 5, 10,
    15, 20, 25... ms between tries: under a burst of submits most writers slept past
    the moment the lock was free (a submit's p99 was 340 ms for 2 ms transactions).

    Threads of a process queue on a mutex; one thread per process at a time then takes
    an flock on `<database>-writer.lock`, which the kernel hands over between processes.
    A lock dies with its process; a forked child opens its own."""

    _queues: dict[str, "WriterQueue"] = {}
    _queues_lock = threading.Lock()
    _fork_lock = threading.Lock()

    def __init__(self, lock_path: str):
        self.lock_path = lock_path
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._owner: int | None = None  # the thread whose turn it is

    @classmethod
    def for_database(cls, database: str | None) -> "WriterQueue | None":
        """The process's queue for a database file (none for an in-memory database)."""
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        path = os.path.abspath(database) + "-writer.lock"
        with cls._queues_lock:
            return cls._queues.setdefault(path, cls(path))

    def acquire(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the turn; False if it did not come.
        Raises NestedWriteTransaction in a thread that holds the turn already: its
        first transaction cannot commit while it waits (a wait of `timeout`, then
        SQLite's busy timeout, then `database is locked`)."""
        self._after_fork()
        if self._owner == threading.get_ident():
            raise NestedWriteTransaction(f"a write transaction of this thread is open on {self.lock_path[:-12]}: "
                                         "commit it before beginning another")
        deadline = time.monotonic() + timeout
        if not self._mutex.acquire(timeout=timeout):
            return False
        try:
            if self._fd is None:
                self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if _flock_before(self._fd, deadline):
                self._owner = threading.get_ident()
                return True
        except OSError:  # an unwritable directory: SQLite's busy handler alone, as before
            pass
        except BaseException:  # interrupted while waiting: the mutex must not stay taken
            self._mutex.release()
            raise
        self._mutex.release()
        return False

    def release(self) -> None:
        if self._pid != os.getpid():  # taken before a fork: the parent's to release
            return
        self._owner = None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _after_fork(self) -> None:
        """A forked child shares the parent's open lock file (and so its flock) and a
        copy of its mutex, perhaps taken: it starts afresh, once (two of its threads
        resetting at once would each take a different mutex, or close the other's file)."""
        if self._pid == os.getpid():
            return
        with self._fork_lock:
            if self._pid != os.getpid():
                if self._fd is not None:
                    os.close(self._fd)  # closing a copy never releases the parent's flock
                self._mutex, self._fd, self._owner = threading.Lock(), None, None
                self._pid = os.getpid()  # last: a thread that sees it uses the new mutex


def _flock_before(fd: int, deadline: float) -> bool:
    """flock(LOCK_EX) by `deadline`: tries at once, then every 0.1 to 1 ms (a blocking
    flock could not give up). Waiting in the kernel instead, in a thread of its own
    that blocks in flock for the waiter, measured no faster (two processes of four
    writing threads, alternated three times: within the 15 % by which one code varies
    from run to run), and each hand-over then costs two threads' turns at the GIL."""
    pause = 0.0001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.001)
