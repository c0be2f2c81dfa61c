"""Engines: what every PostgreSQL connection genq opens is told about a server that vanishes, and
how a pooled one is checked (SQLite's writers: tests/shared/test_sqlite_writers.py)."""
from __future__ import annotations

import os
import time

import pytest

from shared import db
from shared.db import POSTGRES_DEAD_SERVER_PARAMETERS, make_engine
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
