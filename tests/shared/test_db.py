"""Engines: what every PostgreSQL connection genq opens is told about a server that vanishes."""
from __future__ import annotations

import os

import pytest

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
