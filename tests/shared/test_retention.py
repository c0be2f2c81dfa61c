"""Retention, on SQLite and PostgreSQL with local storage (S3's delete_prefix is covered
by tests/shared/test_storage.py's contract): expired jobs and their outputs go, in
batches, oldest first; open work, kept tenants and OpenAI batches still open stay."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from shared import ledger
from shared.db import session_factory, session_scope, transaction
from shared.errors import Conflict, NotFound
from shared.openai_orm import OpenAIBatch, OpenAIBatchJob
from shared.orm import Job, JobItem, OutputRemoval, utcnow
from shared.retention import delete_job, expires_at, remove_jobs, sweep
from shared.settings import Settings, parse_duration
from shared.storage import LocalStorage, output_key
from tests.helpers.ledger import work_by_hand
from tests.shared.test_storage import moto, storage  # noqa: F401 (fixtures: local, and S3 on a moto server)


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                           ("3600", 3600), (7200, 7200), ("1.5h", 5400)])
def test_a_duration_reads_as_people_write_it(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["never", "0", 0, ""])
def test_never_keeps_for_ever(text):
    assert parse_duration(text) is None


def test_a_bad_duration_is_refused_with_the_forms_it_takes():
    with pytest.raises(ValueError, match="30d, 12h"):
        Settings(result_ttl="a month")


@pytest.fixture
def retention_settings(settings):
    return settings.model_copy(update={"result_ttl": timedelta(days=30), "retention_batch_jobs": 3})


def finished_job(settings, outputs, tenant="default", image=True, age=timedelta(days=31)) -> str:
    """A job run by hand (claim, results, settle), its finish moved `age` into the past."""
    with session_scope(settings.database_url) as session:
        job = ledger.create_job(session, model="m", task="text-generation", params={}, inputs=[("p", 1), ("q", 2)],
                                tenant=tenant)
    outcomes = []
    for index in range(2):
        if image:
            key = output_key(job.id, index, "png")
            outputs.put(key, b"png")
            outcomes.append({"key": key})
        else:
            outcomes.append("text")
    work_by_hand(settings.database_url, "m", outcomes)
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job.id).values(finished_at=utcnow() - age))
    return job.id


def job_ids(url) -> set[str]:
    with session_scope(url) as session:
        return set(session.scalars(select(Job.id)))


def test_the_sweep_removes_expired_jobs_rows_and_outputs_in_batches_and_keeps_the_rest(retention_settings,
                                                                                      storage):  # noqa: F811
    url = retention_settings.database_url
    expired = [finished_job(retention_settings, storage, image=n % 2 == 0) for n in range(7)]
    fresh = finished_job(retention_settings, storage, age=timedelta(days=29))
    with session_scope(url) as session:
        running = ledger.create_job(session, model="m", task="text-generation", params={}, inputs=[("r", 3)]).id
    report = sweep(retention_settings, storage)
    assert report.jobs_removed == 7 and report.objects_removed == 4 * 2
    assert job_ids(url) == {fresh, running}
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(JobItem).where(JobItem.job_id.in_(expired))) == 0
        assert session.scalar(select(func.count()).select_from(OutputRemoval)) == 0
    assert sorted(storage.keys()) == [output_key(fresh, 0, "png"), output_key(fresh, 1, "png")]
    assert sweep(retention_settings, storage).jobs_removed == 0


def test_a_tenants_own_ttl_and_never_override_the_default(retention_settings, tmp_path):
    outputs = LocalStorage(tmp_path / "results")
    settings = retention_settings.model_copy(update={"result_ttl_tenants": {"brief": timedelta(hours=1),
                                                                            "archive": None}})
    kept = finished_job(settings, outputs, tenant="archive", age=timedelta(days=400))
    brief = finished_job(settings, outputs, tenant="brief", age=timedelta(hours=2))
    default = finished_job(settings, outputs, age=timedelta(days=31))
    recent_default = finished_job(settings, outputs, age=timedelta(hours=2))
    assert sweep(settings, outputs).jobs_removed == 2
    assert job_ids(settings.database_url) == {kept, recent_default}
    with session_scope(settings.database_url) as session:
        assert expires_at(settings, session.get(Job, kept)) is None
        job = session.get(Job, recent_default)
        assert expires_at(settings, job) == job.finished_at + timedelta(days=30)
    assert brief and default


def test_a_job_of_an_open_openai_batch_stays_until_the_batch_finishes(retention_settings, tmp_path):
    outputs = LocalStorage(tmp_path / "results")
    job_id = finished_job(retention_settings, outputs)
    now = utcnow()
    with session_scope(retention_settings.database_url) as session:
        session.add(OpenAIBatch(id="batch_1", tenant="default", endpoint="/v1/completions", input_file_id="file_1",
                                completion_window="24h", status="finalizing", created_at=now,
                                expires_at=now + timedelta(days=1), total_requests=1))
        session.flush()
        session.add(OpenAIBatchJob(batch_id="batch_1", job_id=job_id, n=1, requests=1))
    assert sweep(retention_settings, outputs).jobs_removed == 0
    with session_scope(retention_settings.database_url) as session:
        with pytest.raises(Conflict, match="OpenAI batch"):
            delete_job(session, session.get(Job, job_id))
        session.execute(update(OpenAIBatch).values(status="completed"))
    assert sweep(retention_settings, outputs).jobs_removed == 1 and job_ids(retention_settings.database_url) == set()


def test_a_removal_cut_off_before_its_objects_went_is_finished_by_the_next_sweep(retention_settings,
                                                                                storage):  # noqa: F811
    job_id = finished_job(retention_settings, storage, age=timedelta(0))
    with transaction(session_factory(retention_settings.database_url)) as session:
        assert remove_jobs(session, [job_id]) == [job_id]  # rows gone, the process dies before the objects
    assert len(list(storage.keys())) == 2 and job_ids(retention_settings.database_url) == set()
    report = sweep(retention_settings, storage)
    assert (report.jobs_removed, report.objects_removed) == (0, 2) and list(storage.keys()) == []
    with session_scope(retention_settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(OutputRemoval)) == 0


def test_an_open_job_cannot_be_deleted(retention_settings):
    with session_scope(retention_settings.database_url) as session:
        job = ledger.create_job(session, model="m", task="text-generation", params={}, inputs=[("r", 3)])
    with session_scope(retention_settings.database_url) as session:
        with pytest.raises(Conflict, match="cancel it first"):
            delete_job(session, session.get(Job, job.id))


def test_a_job_deleted_meanwhile_by_another_request_is_not_found(retention_settings, tmp_path):
    """Two DELETEs of one job: the second found the row before the first committed; when
    it locks the row, it is gone (a 404, not a 500)."""
    job_id = finished_job(retention_settings, LocalStorage(tmp_path / "results"))
    with session_scope(retention_settings.database_url) as session:
        job = session.get(Job, job_id)  # found, as the view's find_job does
        session.commit()  # (SQLite: let the other writer in; PostgreSQL's lock waits for it instead)
        with transaction(session_factory(retention_settings.database_url)) as other:
            assert delete_job(other, other.get(Job, job_id)) == [job_id]
        with pytest.raises(NotFound):
            delete_job(session, job)


class RefusingStorage(LocalStorage):
    """Local storage that cannot delete one job's objects (a permission gone wrong)."""

    def __init__(self, root, refused: str):
        super().__init__(root)
        self.refused = refused

    def delete_prefix(self, prefix: str) -> int:
        if prefix == f"jobs/{self.refused}/":
            raise PermissionError(f"cannot delete {prefix}")
        return super().delete_prefix(prefix)


def test_a_job_whose_outputs_cannot_be_deleted_keeps_its_removal_and_does_not_block_the_others(
        retention_settings, tmp_path):
    local = LocalStorage(tmp_path / "results")
    stuck, *others = [finished_job(retention_settings, local) for _ in range(3)]
    report = sweep(retention_settings, RefusingStorage(tmp_path / "results", refused=stuck))
    assert report.jobs_removed == 3 and report.objects_removed == 4
    assert sorted(local.keys()) == [output_key(stuck, 0, "png"), output_key(stuck, 1, "png")]
    with session_scope(retention_settings.database_url) as session:
        assert list(session.scalars(select(OutputRemoval.job_id))) == [stuck]
    assert sweep(retention_settings, local).objects_removed == 2 and list(local.keys()) == []
