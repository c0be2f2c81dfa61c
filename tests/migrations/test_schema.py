"""The migrated schema is exactly the ORM's: no pending autogenerate diff."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, select, text
from sqlalchemy.orm import Session

from migrations import alembic_config, upgrade
from shared.ledger import batch_key
from shared.ledger.turns import TURN_ORDER
from shared.orm import NEVER_CLAIMED, Base, TenantTurn
from tests.helpers.database import BACKENDS, database_url_for, reset_schema


@contextmanager
def migrated(backend, tmp_path, revision: str = "head") -> Iterator[tuple[str, Engine]]:
    """(url, engine) of an empty database migrated to `revision`; emptied again after."""
    url = database_url_for(backend, tmp_path)
    reset_schema(url)
    upgrade(url, revision)
    engine = create_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        reset_schema(url)


def insert_job(connection, job_id: str, **columns) -> None:
    """A running job's row as written at an older revision (raw SQL: the ORM is head's);
    `columns` add to or override the defaults."""
    values = {"id": job_id, "tenant": "t", "model": "m", "task": "text-generation", "state": "running",
              "priority": 5, "params": "{}", "attempts": 0, "created_at": "2026-01-01 00:00:00+00", **columns}
    connection.execute(text(f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join(':' + name for name in values)})"),
                       values)


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrations_match_the_orm(backend, tmp_path):
    with migrated(backend, tmp_path) as (url, engine):
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert {"jobs", "job_items", "alembic_version"} <= set(inspect(connection).get_table_names())


@pytest.mark.parametrize("backend", BACKENDS)
def test_0004_moves_fair_turns_out_of_the_jobs_table_and_keys_old_jobs(backend, tmp_path):
    with migrated(backend, tmp_path, "0003") as (url, engine):
        with engine.begin() as connection:
            for job_id, tenant, params, claimed in (("a" * 32, "t1", '{"seed": 1, "x": 2}', "2026-01-01 00:00:00+00"),
                                                     ("b" * 32, "t1", '{"seed": 9, "x": 2}', "2026-01-02 00:00:00+00"),
                                                     ("c" * 32, "t2", '{"x": 3}', None)):
                connection.execute(text(
                    "INSERT INTO jobs (id, tenant, model, task, state, priority, params, total_items, attempts, "
                    "created_at, last_claimed_at) VALUES (:id, :tenant, 'm', 'text-generation', 'succeeded', 5, "
                    ":params, 1, 0, '2026-01-01 00:00:00+00', :claimed)"),
                    {"id": job_id, "tenant": tenant, "params": params, "claimed": claimed})
        upgrade(url, "0004")
        with engine.connect() as connection:
            keys = dict(connection.execute(text("SELECT id, batch_key FROM jobs")).all())
            turns = {tenant: claimed for tenant, claimed in
                     connection.execute(text("SELECT tenant, last_claimed_at FROM tenant_turns WHERE model = 'm'"))}
        assert keys["a" * 32] == keys["b" * 32] == batch_key({"x": 2}) != keys["c" * 32]  # the seed does not count
        assert set(turns) == {"t1", "t2"} and turns["t2"] is None and str(turns["t1"]).startswith("2026-01-02")
        command.downgrade(alembic_config(url), "0003")


@pytest.mark.parametrize("backend", BACKENDS)
def test_0006_and_0007_go_down_whole_and_up_again(backend, tmp_path):
    added = {"openai_files", "openai_batches", "openai_batch_jobs", "openai_batch_requests", "tenant_webhooks",
             "webhook_deliveries", "webhook_attempts"}
    with migrated(backend, tmp_path) as (url, engine):
        command.downgrade(alembic_config(url), "0005")
        with engine.connect() as connection:
            schema = inspect(connection)
            assert added.isdisjoint(schema.get_table_names())
            assert "webhook" not in {column["name"] for column in schema.get_columns("jobs")}
            indexes = {index["name"] for table in ("jobs", "job_items") for index in schema.get_indexes(table)}
            assert indexes.isdisjoint({"ix_jobs_tenant_finished", "ix_job_items_job_finished"})
        upgrade(url)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert added <= set(inspect(connection).get_table_names())


@pytest.mark.parametrize("backend", BACKENDS)
def test_0009_counts_the_items_of_existing_jobs_into_their_counters_and_goes_down(backend, tmp_path):
    with migrated(backend, tmp_path, "0008") as (url, engine):
        with engine.begin() as connection:
            insert_job(connection, "a" * 32, total_items=6, batch_key="", attempts=1)
            for index, state in enumerate(("pending", "pending", "running", "succeeded", "failed", "cancelled")):
                connection.execute(text("INSERT INTO job_items (job_id, idx, prompt, seed, state, attempts) "
                                        "VALUES (:job, :idx, 'p', 0, :state, 0)"),
                                   {"job": "a" * 32, "idx": index, "state": state})
        upgrade(url, "0009")
        with engine.connect() as connection:
            counters = connection.execute(text("SELECT pending_items, running_items, failed_items, cancelled_items "
                                               "FROM jobs")).one()
        assert tuple(counters) == (2, 1, 1, 1)
        command.downgrade(alembic_config(url), "0008")
        with engine.connect() as connection:
            assert "pending_items" not in {column["name"] for column in inspect(connection).get_columns("jobs")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_0010_gives_tenants_never_served_the_oldest_turn_and_goes_down(backend, tmp_path):
    with migrated(backend, tmp_path, "0009") as (url, engine):
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO tenant_turns (model, tenant, last_claimed_at) VALUES "
                                    "('m', 'served', '2026-01-01 00:00:00+00'), ('m', 'never', NULL)"))
        upgrade(url, "0010")
        with Session(engine) as session:  # read through the ORM, as the claim reads them
            turns = dict(session.execute(select(TenantTurn.tenant, TenantTurn.last_claimed_at)).all())
            order = list(session.scalars(select(TenantTurn.tenant).order_by(*TURN_ORDER)))
        assert turns["never"] == NEVER_CLAIMED and order == ["never", "served"]
        assert "ix_tenant_turns_order" in {index["name"] for index in inspect(engine).get_indexes("tenant_turns")}
        command.downgrade(alembic_config(url), "0009")
        with engine.connect() as connection:
            turns = dict(connection.execute(text("SELECT tenant, last_claimed_at FROM tenant_turns")).all())
        assert turns["never"] is None and turns["served"] is not None



def _where_of(index: dict) -> str:
    """An index's partial condition as reflected (SQLite: a clause; PostgreSQL: text)."""
    options = index["dialect_options"]
    where = options.get("sqlite_where", options.get("postgresql_where"))
    return "" if where is None else str(getattr(where, "text", where))


def _conditions(engine: Engine) -> dict[str, str]:
    return {index["name"]: _where_of(index) for table in ("jobs", "job_items")
            for index in inspect(engine).get_indexes(table)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_0011_keeps_rows_without_a_lease_or_finish_out_of_their_indexes_and_goes_down(backend, tmp_path):
    from shared.ledger import claims

    with migrated(backend, tmp_path, "0010") as (url, engine):
        with engine.begin() as connection:
            insert_job(connection, "j" * 32, total_items=2, pending_items=1, running_items=1)
            connection.execute(text(
                "INSERT INTO job_items (job_id, idx, state, prompt, seed, attempts, lease_id, lease_expires_at) VALUES "
                "(:job, 0, 'running', 'p', 1, 1, 'lease', '2026-01-01 00:00:00+00'), "
                "(:job, 1, 'pending', 'p', 2, 0, NULL, NULL)"), {"job": "j" * 32})
        upgrade(url, "0011")
        conditions = _conditions(engine)
        for name, column in (("ix_job_items_lease", "lease_id"), ("ix_job_items_state_lease_expiry", "lease_expires_at"),
                             ("ix_job_items_job_finished", "finished_at"), ("ix_jobs_finished", "finished_at"),
                             ("ix_jobs_tenant_finished", "finished_at"),
                             ("ix_jobs_tenant_idempotency_key", "idempotency_key")):
            assert f"{column} IS NOT NULL" in conditions[name], name
        upgrade(url, "head")  # the ledger's verbs of today
        with Session(engine) as session:  # the item leased before the upgrade is found through them
            assert claims.extend_lease(session, "lease", 60) == 1
            session.execute(text("UPDATE job_items SET lease_expires_at = '2026-01-01 00:00:00+00' WHERE idx = 0"))
            assert claims.release_expired_leases(session, max_attempts=3) == 1
            session.commit()
        command.downgrade(alembic_config(url), "0010")
        assert set(_conditions(engine).values()) == {""}


@pytest.mark.parametrize("backend", BACKENDS)
def test_0012_keeps_only_jobs_with_pending_items_in_the_claim_order_and_goes_down(backend, tmp_path):
    from shared.ledger import claims

    with migrated(backend, tmp_path, "0011") as (url, engine):
        with engine.begin() as connection:
            insert_job(connection, "q" * 32, state="queued", total_items=2, pending_items=2)
            insert_job(connection, "r" * 32, total_items=2, pending_items=1, running_items=1, priority=9)
            insert_job(connection, "s" * 32, state="succeeded", total_items=1, priority=9)
        upgrade(url, "0012")
        index = next(index for index in inspect(engine).get_indexes("jobs") if index["name"] == "ix_jobs_claim_order")
        assert "pending_items > 0" in _where_of(index) and "state" not in index["column_names"]
        with Session(engine) as session:  # the jobs written before the upgrade, in claim order
            assert list(session.scalars(claims.jobs_in_claim_order("m", "t", 10))) == ["r" * 32, "q" * 32]
        command.downgrade(alembic_config(url), "0011")
        index = next(index for index in inspect(engine).get_indexes("jobs") if index["name"] == "ix_jobs_claim_order")
        assert _where_of(index) == "" and "state" in index["column_names"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_0013_indexes_the_pending_items_that_spent_an_attempt_and_goes_down(backend, tmp_path):
    from shared.ledger import claims

    with migrated(backend, tmp_path, "0012") as (url, engine):
        with engine.begin() as connection:
            insert_job(connection, "j" * 32, total_items=3, pending_items=3)
            connection.execute(text(
                "INSERT INTO job_items (job_id, idx, state, prompt, seed, attempts) VALUES "
                "(:job, 0, 'pending', 'p', 1, 0), (:job, 1, 'pending', 'p', 2, 1), (:job, 2, 'failed', 'p', 3, 3)"),
                {"job": "j" * 32})
        upgrade(url, "0013")
        index = next(index for index in inspect(engine).get_indexes("job_items") if index["name"] == "ix_job_items_suspect")
        assert "attempts > 0" in _where_of(index) and index["column_names"] == ["job_id", "state", "idx"]
        with Session(engine) as session:  # the item written before the upgrade is found through it
            suspect = claims._suspect_item(session, "j" * 32)
            assert session.scalar(text("SELECT idx FROM job_items WHERE id = :id"), {"id": suspect[0]}) == 1
        command.downgrade(alembic_config(url), "0012")
        assert "ix_job_items_suspect" not in _conditions(engine)


@pytest.mark.parametrize("backend", BACKENDS)
def test_0014_sums_each_tenants_pending_items_into_its_total_and_goes_down(backend, tmp_path):
    from shared.ledger import tenant_pending

    with migrated(backend, tmp_path, "0013") as (url, engine):
        with engine.begin() as connection:
            insert_job(connection, "a" * 32, tenant="t", total_items=5, pending_items=3, running_items=2)
            insert_job(connection, "b" * 32, tenant="t", total_items=4, pending_items=4)
            insert_job(connection, "c" * 32, tenant="u", state="succeeded", total_items=1)
        upgrade(url, "0014")
        with engine.connect() as connection:
            assert [tenant_pending.of_tenant(connection, tenant) for tenant in "tuv"] == [7, 0, 0]
        command.downgrade(alembic_config(url), "0013")
        assert "tenant_pending_items" not in inspect(engine).get_table_names()
