"""The migrated schema is exactly the ORM's: no pending autogenerate diff."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from migrations import upgrade
from shared.orm import Base
from tests.helpers.database import BACKENDS, database_url_for, reset_schema


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrations_match_the_orm(backend, tmp_path):
    url = database_url_for(backend, tmp_path)
    reset_schema(url)
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert {"jobs", "job_items", "alembic_version"} <= set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
        reset_schema(url)
