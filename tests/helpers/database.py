"""Test databases: a SQLite file per test, and PostgreSQL when GENQ_TEST_DATABASE_URL is set."""
from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from shared.db import dispose_engines, get_engine
from shared.orm import Base

POSTGRES_URL_VARIABLE = "GENQ_TEST_DATABASE_URL"
BACKENDS = ["sqlite", "postgresql"]


def database_url_for(backend: str, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'genq.db'}"
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set")
    return url


def reset_schema(url: str) -> None:
    """Drop everything genq owns (including Alembic's table) so each test starts empty."""
    engine = get_engine(url)
    with engine.begin() as connection:
        Base.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    dispose_engines()


def create_schema(url: str) -> None:
    Base.metadata.create_all(get_engine(url))
