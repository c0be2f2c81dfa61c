"""Database engines and sessions.

One engine per process and URL, built on first use. SQLite gets WAL mode and a busy
timeout so the web process and a worker can write at the same time without
`database is locked` errors.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, make_url
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

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def make_engine(url: str) -> Engine:
    """A new engine for `url`, with the pragmas genq needs on SQLite."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin)
        return engine
    query = make_url(url).query
    dead_server = {name: value for name, value in POSTGRES_DEAD_SERVER_PARAMETERS.items() if name not in query}
    engine = create_engine(url, pool_pre_ping=True, connect_args=dead_server)
    event.listen(engine, "connect", _configure_postgres_connection)
    return engine


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


def _configure_sqlite_connection(dbapi_connection, _record) -> None:
    # Let SQLAlchemy issue BEGIN itself (see _begin_immediate).
    dbapi_connection.isolation_level = None
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
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")


def get_engine(url: str) -> Engine:
    """The process's engine for `url` (built once)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    """Forget every engine (after fork, or between tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def session_factory(url: str, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on the process's engine; `read_only` ones never take SQLite's write lock
    (a write in one fails instead of waiting)."""
    engine = get_engine(url)
    return sessionmaker(bind=engine.execution_options(**{READ_ONLY: True}) if read_only else engine,
                        expire_on_commit=False)


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
