"""Database engines and sessions.

One engine per process and URL, built on first use. SQLite gets WAL mode and a busy
timeout so the web process and a worker can write at the same time without
`database is locked` errors, and its writers queue for the one write lock
(`shared.sqlite_writers`) instead of polling for it.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.sqlite_writers import QueuedConnection, WriterQueue

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
    dbapi_connection.queue_for_write(SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        dbapi_connection.leave_write_queue()
        raise




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
