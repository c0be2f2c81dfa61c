"""Engines: what every PostgreSQL connection genq opens is told about a server that vanishes, how
a pooled one is checked, and how SQLite writers queue for the write lock."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from shared import db
from shared.db import (
    POSTGRES_DEAD_SERVER_PARAMETERS,
    NestedWriteTransaction,
    WriterQueue,
    dispose_engines,
    make_engine,
    session_factory,
    session_scope,
    transaction,
)
from tests.helpers.database import POSTGRES_URL_VARIABLE


def connection_parameters(url: str) -> dict[str, str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.connection.dbapi_connection.info.get_parameters()
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url():
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set")
    return url


def test_a_postgres_connection_notices_a_dead_server_in_seconds(postgres_url):
    parameters = connection_parameters(postgres_url)
    for name, value in POSTGRES_DEAD_SERVER_PARAMETERS.items():
        assert parameters.get(name) == str(value), (name, parameters)


def test_the_database_url_overrides_a_dead_server_parameter(postgres_url):
    separator = "&" if "?" in postgres_url else "?"
    parameters = connection_parameters(f"{postgres_url}{separator}keepalives_idle=42")
    assert parameters["keepalives_idle"] == "42"
    assert parameters["tcp_user_timeout"] == str(POSTGRES_DEAD_SERVER_PARAMETERS["tcp_user_timeout"])


# --- SQLite writers queue for the write lock (shared.db.WriterQueue) ----------------------
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


# --- PostgreSQL: a pooled connection idle for a while is pinged, a busy one is not -----------
def test_a_postgres_connection_dropped_while_idle_is_replaced(postgres_url, monkeypatch):
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        admin = make_engine(postgres_url)
        with admin.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        admin.dispose()
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.05)
        time.sleep(0.1)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
    finally:
        engine.dispose()


def test_a_postgres_connection_back_from_use_a_moment_ago_is_not_pinged(postgres_url, monkeypatch):
    engine = make_engine(postgres_url)
    pings = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda connection: pings.append(1) or real_ping(connection))
    try:
        for _ in range(3):
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        assert pings == []
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.05)
        time.sleep(0.1)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        assert pings == [1]
    finally:
        engine.dispose()
