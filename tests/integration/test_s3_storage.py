"""The real stack (web, worker and reconciler processes, Redis, SQLite or PostgreSQL)
with outputs in an S3-compatible bucket served by a real moto server: an image job end
to end over HTTP, and the fault case of an object written whose row was never
committed."""
from __future__ import annotations

import io
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from genq.devstack import wait_for
from shared import ledger
from shared.db import session_scope
from shared.orm import JobItem, utcnow
from shared.storage import LocalStorage, output_key
from tests.helpers.s3 import MotoServer, assert_objects_match_rows

pytestmark = pytest.mark.integration

PREFIX = "cluster/outputs"
IMAGE_JOB = {"model": "tiny-uncond", "prompts": [f"image {i}" for i in range(6)],
             "params": {"num_inference_steps": 2, "seed": 11}}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_stack(make_stack, moto):
    """A stack whose every process keeps outputs in a fresh bucket, configured the way an
    operator would: GENQ_STORAGE_URL and GENQ_S3_* settings."""
    bucket = moto.new_bucket()

    def build(**settings):
        stack = make_stack(**moto.settings(bucket, PREFIX), **settings)
        stack.bucket = moto.storage(bucket, PREFIX)
        return stack

    return build


def test_an_image_job_stores_in_s3_and_downloads_stream_or_redirect(s3_stack, moto):
    stack = s3_stack()
    stack.start_reconciler()
    stack.start_worker()
    job_id = stack.submit(IMAGE_JOB)
    job = stack.wait_terminal(job_id, timeout=300)
    assert job["state"] == "succeeded", job
    items = stack.items(job_id)
    for item in items:
        key = output_key(job_id, item["index"], "png")
        stored = stack.bucket.get(key)
        streamed = stack.get(item["output"]["image_url"])
        assert streamed.status_code == 200 and streamed.headers["Content-Type"] == "image/png"
        assert int(streamed.headers["Content-Length"]) == len(stored) and streamed.content == stored
        Image.open(io.BytesIO(streamed.content)).load()
        redirected = stack.get(item["output"]["image_url"] + "?redirect=1", allow_redirects=False)
        assert redirected.status_code == 302 and redirected.headers["Cache-Control"] == "no-store"
        location = redirected.headers["Location"]
        assert urlsplit(location).netloc == f"{moto.host}:{moto.port}" and f"/{PREFIX}/{key}" in location
        fetched = requests.get(location, timeout=30)  # no API key: the signature is the permission
        assert fetched.status_code == 200 and fetched.content == stored
    assert stack.get(items[0]["output"]["image_url"] + "?redirect=maybe").status_code == 400
    assert not stack.storage_dir.exists() or not any(stack.storage_dir.rglob("*.png")), "an output went to local disk"
    assert assert_objects_match_rows(stack.database_url, stack.bucket)["succeeded"] == 6


def test_an_output_removed_from_the_bucket_is_a_404_not_a_500(s3_stack):
    stack = s3_stack()
    stack.start_worker()
    job_id = stack.submit({**IMAGE_JOB, "prompts": ["one"]})
    assert stack.wait_terminal(job_id, timeout=300)["state"] == "succeeded"
    stack.bucket.delete(output_key(job_id, 0, "png"))
    response = stack.get(f"/v1/jobs/{job_id}/items/0/output")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@pytest.fixture(params=["s3", "local"])
def any_stack(request, make_stack, s3_stack):
    if request.param == "s3":
        return s3_stack

    def build(**settings):
        stack = make_stack(**settings)
        stack.bucket = LocalStorage(stack.storage_dir)
        return stack

    return build


@pytest.mark.parametrize("attempts_spent,outcome", [(1, "succeeded"), (3, "failed")])
def test_an_object_written_whose_row_was_never_committed(any_stack, fault_redis, attempts_spent, outcome):
    """A worker claimed a slice, stored its PNGs and vanished before committing the rows
    (its wake-up gone from Redis too). Below the attempt cap the items run again and their
    objects are replaced by committed ones; at the cap they fail, and the orphan sweep
    removes the objects no row points to. On S3 and, for comparison, on local disk."""
    stack = any_stack()
    job_id = stack.submit({**IMAGE_JOB, "prompts": ["a", "b", "c"]})
    fault_redis.client().flushall()
    with session_scope(stack.database_url) as session:
        slice_ = ledger.claim_slice(session, model="tiny-uncond", owner="vanished", max_items=3,
                                       lease_seconds=1, now=utcnow() - timedelta(minutes=5))
        session.query(JobItem).filter(JobItem.lease_id == slice_.lease_id).update({"attempts": attempts_spent})
    written = [output_key(job_id, index, "png") for index in range(3)]
    for key in written:
        stack.bucket.put(key, b"written by a worker that never committed")
    assert set(stack.bucket.keys()) == set(written)
    stack.start_reconciler()
    stack.start_worker()
    job = stack.wait_terminal(job_id, timeout=300)
    assert job["state"] == outcome
    if outcome == "failed":  # the reconciler sweeps once the commit that settles the job is done: a moment later
        wait_for(lambda: not list(stack.bucket.keys()), 30, what="the orphan sweep")
    counts = assert_objects_match_rows(stack.database_url, stack.bucket)
    if outcome == "failed":
        assert counts["failed"] == 3 and list(stack.bucket.keys()) == []
    else:
        assert counts["succeeded"] == 3
        assert all(stack.bucket.get(key).startswith(b"\x89PNG") for key in written)


def test_a_finished_job_expires_and_the_reconciler_removes_it_and_its_outputs(any_stack):
    """Retention under the real reconciler: GENQ_RESULT_TTL after the job finished, its
    rows and its objects go (on S3 and on local disk); a job still to expire stays."""
    stack = any_stack(result_ttl="3s", result_ttl_tenants='{"keeper": "never"}', retention_interval_seconds=0.5)
    stack.start_worker()
    job_id = stack.submit({**IMAGE_JOB, "prompts": ["a", "b"]})
    job = stack.wait_terminal(job_id, timeout=300)
    assert job["state"] == "succeeded" and job["expires_at"] is not None
    assert len(list(stack.bucket.keys())) == 2
    reconciler = stack.start_reconciler()
    try:
        wait_for(lambda: stack.get(f"/v1/jobs/{job_id}").status_code == 404, 120, what="the job to expire")
        wait_for(lambda: not list(stack.bucket.keys()), 60, what="its outputs to be deleted")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; reconciler: {reconciler.log()[-3000:]}") from None
