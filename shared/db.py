"""Database engines and sessions.

One engine per process and URL, built on first use. SQLite gets WAL mode and a busy
timeout so the web process and a worker can write at the same time without
`database is locked` errors, and its writers queue for the one write lock
(`WriterQueue`) instead of polling for it.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A PostgreSQL server that vanishes without a word (a host cut off, a NAT or firewall
# that forgot the connection) must fail the statement waiting on it, not hang it for
# ever: libpq's default keepalive starts after two hours of quiet, and a worker waiting
# for a reply it will never get would hold its slice until then. These notice a dead
# server within about 25 s of quiet (keepalive probes) or 30 s of unacknowledged data
# (TCP user timeout); probes are answered by a live server's kernel, so a slow query is
# never cut. A parameter of the same name in the database URL's query wins.
POSTGRES_DEAD_SERVER_PARAMETERS = {
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

_engines: dict[tuple[str, bool], Engine] = {}
_lock = threading.Lock()


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """A new engine for `url`, with the pragmas genq needs on SQLite. On PostgreSQL a
    `read_only` engine has a pool of its own (see `_postgres_read_settings`)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False,
                          "factory": QueuedConnection},
        )
        writers = WriterQueue.for_database(make_url(url).database)
        event.listen(engine, "connect", lambda connection, record: _configure_sqlite_connection(connection, writers))
        event.listen(engine, "begin", _begin)
        return engine
    _cache_long_statements()
    query = make_url(url).query
    connect_args = {name: value for name, value in POSTGRES_DEAD_SERVER_PARAMETERS.items() if name not in query}
    options = {}
    if read_only:
        connect_args, options = _postgres_read_settings(query, connect_args)
    engine = create_engine(url, connect_args=connect_args, **options)
    event.listen(engine, "connect", _configure_postgres_connection)
    event.listen(engine, "checkin", _note_return)
    event.listen(engine, "checkout", lambda connection, record, _proxy: _ping_if_idle(engine, connection, record))
    return engine


def _postgres_read_settings(query, connect_args: dict) -> tuple[dict, dict]:
    """A PostgreSQL read engine's connections are READ ONLY for their whole life (a write
    fails) and in autocommit: a read transaction cost two round trips beside its
    statements (psycopg sends BEGIN on its own, then COMMIT), about 8 % of a status
    poll's CPU. Under READ COMMITTED each statement took its own snapshot already, so a
    request reads nothing different; and with no rollback psycopg keeps the statements it
    prepared on the connection (its rollback deallocates them all)."""
    read_only = "-c default_transaction_read_only=on"
    given = query.get("options")
    options = f"{given} {read_only}" if isinstance(given, str) and given else read_only
    return {**connect_args, "options": options}, {"isolation_level": "AUTOCOMMIT"}


# psycopg converts a statement's `%(name)s` placeholders with a regular expression, and
# keeps the result only for statements of up to 4,096 characters and 50 parameters. The
# queue-position and claim statements are longer (4,000 to 6,000 characters): converting
# them again cost about 0.8 ms of the web's CPU on every poll of a queued or running job.
# They are a fixed set built once per process, so caching them all stays small.
POSTGRES_CACHED_STATEMENT_LENGTH = 65_536
POSTGRES_CACHED_STATEMENT_PARAMS = 500


def _cache_long_statements() -> None:
    from psycopg import _queries  # no public setting; a psycopg without these names keeps its own

    for name, value in (("MAX_CACHED_STATEMENT_LENGTH", POSTGRES_CACHED_STATEMENT_LENGTH),
                        ("MAX_CACHED_STATEMENT_PARAMS", POSTGRES_CACHED_STATEMENT_PARAMS)):
        if getattr(_queries, name, value) < value:
            setattr(_queries, name, value)


# A pooled PostgreSQL connection that lay idle this long is pinged before it is handed
# out (one round trip), so one the server dropped meanwhile (a restart, an idle timeout)
# is replaced instead of failing the request. One in use moments ago is not: pinging at
# every checkout (`pool_pre_ping`) added a round trip to every request and transaction.
PING_AFTER_IDLE_SECONDS = 1.0
_RETURNED_AT = "genq_returned_at"


def _note_return(_dbapi_connection, record) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _ping_if_idle(engine: Engine, dbapi_connection, record) -> None:
    returned_at = record.info.get(_RETURNED_AT)
    if returned_at is None or time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
        return  # new (connected just now), or back from use a moment ago
    try:
        engine.dialect.do_ping(dbapi_connection)
    except engine.dialect.loaded_dbapi.Error as exc:
        raise DisconnectionError(f"a pooled connection is dead: {exc}") from exc


def _configure_postgres_connection(dbapi_connection, _record) -> None:
    """Plan every execution with its parameters and the tables' present size. psycopg
    prepares a statement run five times, and PostgreSQL then keeps one generic plan for
    the connection's life: chosen while the ledger was small, it stays (a claim whose
    queries took 2 ms unprepared took 300 ms prepared once the queue held 10,000 jobs).
    Planning these statements costs a fraction of a millisecond."""
    cursor = dbapi_connection.cursor()
    cursor.execute("SET plan_cache_mode = force_custom_plan")
    cursor.close()
    dbapi_connection.commit()


def _configure_sqlite_connection(dbapi_connection, writers: "WriterQueue | None") -> None:
    # Let SQLAlchemy issue BEGIN itself (see _begin).
    dbapi_connection.isolation_level = None
    dbapi_connection.writers = writers
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


READ_ONLY = "genq_read_only"  # an execution option: this connection's transactions only read


def _begin(connection) -> None:
    """Take SQLite's write lock at BEGIN, so a reader that later writes never meets a
    lock upgrade deadlock (which SQLite reports at once instead of waiting) — except in
    a transaction that only reads, which must not queue behind writers (WAL gives it a
    snapshot without any lock)."""
    if connection.get_execution_options().get(READ_ONLY, False):
        connection.exec_driver_sql("BEGIN DEFERRED")
        return
    dbapi_connection = connection.connection.dbapi_connection
    dbapi_connection.queue_for_write()
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        dbapi_connection.leave_write_queue()
        raise


class QueuedConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions hold this database's `WriterQueue`
    from BEGIN IMMEDIATE to COMMIT or ROLLBACK (or close)."""

    writers: "WriterQueue | None" = None
    _queued = False

    def queue_for_write(self) -> None:
        if self.writers is not None and not self._queued:
            self._queued = self.writers.acquire(SQLITE_BUSY_TIMEOUT_MS / 1000)

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
    It is only a queue: SQLite's lock still guards the data (a writer that waited past
    `timeout` goes on to BEGIN IMMEDIATE and SQLite's busy handler). A lock dies with its
    process; a forked child opens its own."""

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
    flock could not give up)."""
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


def get_engine(url: str, *, read_only: bool = False) -> Engine:
    """The process's engine for `url` (built once); on PostgreSQL, `read_only` gives the
    process's read engine."""
    key = (url, read_only and not url.startswith("sqlite"))
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(url, read_only=key[1])
        return engine


def dispose_engines() -> None:
    """Forget every engine (after fork, or between tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def session_factory(url: str, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on the process's engine; `read_only` ones never take SQLite's write lock
    (a write in one fails instead of waiting), and on PostgreSQL run on the read engine
    (a write in one fails; see `_postgres_read_settings`)."""
    engine = get_engine(url, read_only=read_only)
    if read_only and engine.dialect.name == "sqlite":
        engine = engine.execution_options(**{READ_ONLY: True})
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with transaction(session_factory(url)) as session:
        yield session


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One session of `sessions` that commits on success and rolls back on error."""
    session = sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
