"""Read sessions on PostgreSQL: a pool of their own whose connections are READ ONLY and in
autocommit (no BEGIN or COMMIT round trip, and no rollback, which would drop the
statements psycopg prepared), while a write session closed without a commit still rolls
back."""
from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from shared import db
from shared.db import dispose_engines, session_factory
from tests.helpers.database import POSTGRES_URL_VARIABLE

PREPARED = text("SELECT count(*) FROM pg_prepared_statements")


@pytest.fixture
def postgres_url():
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set")
    dispose_engines()
    yield url
    dispose_engines()


def read(sessions, statement, params=None):
    session = sessions()
    try:
        return session.execute(statement, params or {}).scalar()
    finally:
        session.close()  # as the web closes a GET's session: no commit


def test_statements_psycopg_prepared_outlive_the_read_sessions_that_ran_them(postgres_url):
    sessions = session_factory(postgres_url, read_only=True)
    for value in range(8):  # psycopg prepares a statement from its 6th run on a connection
        assert read(sessions, text("SELECT CAST(:value AS integer) + 1"), {"value": value}) == value + 1
    assert read(sessions, PREPARED) >= 1


def test_a_read_session_runs_each_statement_in_its_own_transaction(postgres_url):
    """No BEGIN: in a transaction now() stays at its start, while here each statement
    begins anew."""
    session = session_factory(postgres_url, read_only=True)()
    try:
        session.execute(text("SELECT pg_sleep(0.01)"))
        assert session.execute(text("SELECT now() = statement_timestamp()")).scalar()
    finally:
        session.close()


def test_a_read_session_keeps_options_given_in_the_url(postgres_url):
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}options=-c%20application_name%3Dgenq-reader"
    assert read(session_factory(url, read_only=True), text("SHOW application_name")) == "genq-reader"
    assert read(session_factory(url, read_only=True), text("SHOW transaction_read_only")) == "on"


def test_a_write_in_a_read_session_fails(postgres_url):
    session = session_factory(postgres_url, read_only=True)()
    try:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            session.execute(text("CREATE TEMPORARY TABLE written_in_a_read (x integer)"))
    finally:
        session.close()


def test_a_failed_read_transaction_is_rolled_back_and_its_connection_serves_the_next(postgres_url):
    sessions = session_factory(postgres_url, read_only=True)
    session = sessions()
    with pytest.raises(ProgrammingError):
        session.execute(text("SELECT no_such_column FROM pg_class"))
    session.close()
    assert read(sessions, text("SELECT 1")) == 1


def test_a_write_session_closed_without_a_commit_still_rolls_back(postgres_url):
    sessions = session_factory(postgres_url)
    session = sessions()
    backend = session.execute(text("SELECT pg_backend_pid()")).scalar()
    session.execute(text("CREATE TEMPORARY TABLE left_uncommitted (x integer)"))  # the connection's own table
    session.close()
    session = sessions()
    try:
        assert session.execute(text("SELECT pg_backend_pid()")).scalar() == backend
        assert session.execute(text("SELECT to_regclass('pg_temp.left_uncommitted') IS NULL")).scalar()
    finally:
        session.close()


def test_a_read_session_on_a_connection_pinged_after_idling_is_read_only(postgres_url, monkeypatch):
    """The ping (autocommit) leaves no transaction open, so the READ ONLY characteristic
    still applies to the transaction that follows it."""
    sessions = session_factory(postgres_url, read_only=True)
    assert read(sessions, text("SHOW transaction_read_only")) == "on"
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.01)
    time.sleep(0.05)
    assert read(sessions, text("SHOW transaction_read_only")) == "on"
    assert read(session_factory(postgres_url), text("SHOW transaction_read_only")) == "off"
