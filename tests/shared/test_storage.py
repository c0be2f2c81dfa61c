"""Both storage backends behind one contract, the S3 one against a real S3-compatible
server (moto in server mode) that the tests start on a free port."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest
import requests
from botocore.exceptions import BotoCoreError, ClientError

from genq.devstack import free_port
from shared.errors import ConfigError
from shared.s3 import S3Storage
from shared.settings import Settings
from shared.storage import LocalStorage, OutputMissing, StorageUnavailable, output_key, storage_from_settings
from tests.helpers.s3 import CREDENTIALS, MotoServer
from tests.helpers.tcp import Forwarder


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "results")
    moto = request.getfixturevalue("moto")
    return moto.storage(moto.new_bucket(), "deploy/outputs")


def test_put_get_open_exists_delete(storage):
    key = output_key("job-1", 7, "png")
    assert not storage.exists(key)
    storage.put(key, b"\x89PNG first")
    storage.put(key, b"\x89PNG second")  # a repeated write replaces the same object
    assert storage.exists(key) and storage.get(key) == b"\x89PNG second"
    opened = storage.open(key)
    assert (opened.size, opened.content_type, b"".join(opened.chunks)) == (11, "image/png", b"\x89PNG second")
    assert list(storage.keys()) == [key] and list(storage.keys("jobs/job-2")) == []
    storage.delete(key)
    storage.delete(key)  # deleting what is gone is not an error (the orphan sweep repeats)
    assert not storage.exists(key) and list(storage.keys()) == []
    with pytest.raises(OutputMissing):
        storage.open(key)
    with pytest.raises(OutputMissing):
        storage.get(key)


def test_a_large_object_streams_in_chunks(storage):
    data = os.urandom(3 * 1024 * 1024 + 5)
    storage.put("jobs/big/000000.png", data)
    opened = storage.open("jobs/big/000000.png")
    chunks = list(opened.chunks)
    assert len(chunks) > 1 and max(map(len, chunks)) <= 64 * 1024 and b"".join(chunks) == data


@pytest.mark.parametrize("key", ["../escape.png", "/abs.png", "jobs/../../x", "jobs/a b.png", ""])
def test_keys_outside_the_pattern_are_refused(storage, key):
    with pytest.raises(ValueError):
        storage.put(key, b"x")


def test_a_reader_never_sees_part_of_an_object(storage):
    """A writer replaces one key with whole 2 MiB bodies while a reader reads it: every
    read is one of the bodies, whole."""
    bodies = [bytes([n]) * (2 * 1024 * 1024) for n in range(1, 6)]
    digests = {hashlib.sha256(body).hexdigest() for body in bodies}
    key, seen, done = "jobs/race/000000.png", [], threading.Event()
    storage.put(key, bodies[0])

    def read_until_done():
        while not done.is_set():
            seen.append(hashlib.sha256(storage.get(key)).hexdigest())

    reader = threading.Thread(target=read_until_done)
    reader.start()
    for body in bodies[1:] * 2:
        storage.put(key, body)
    done.set()
    reader.join(30)
    assert seen and set(seen) <= digests


def test_an_s3_put_cut_off_mid_body_leaves_no_object(moto):
    """The link to S3 drops after 1 MiB of a 4 MiB PutObject (every try): the write
    fails and no object, whole or partial, appears under the key."""
    bucket = moto.new_bucket()
    cutter = Forwarder("127.0.0.1", (moto.host, moto.port), cut_after_bytes=1024 * 1024).start()
    try:
        cut = S3Storage(bucket, endpoint_url=f"http://127.0.0.1:{cutter.port}", region="us-east-1",
                        access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], timeout=5)
        with pytest.raises((BotoCoreError, ClientError)):
            cut.put("jobs/cut/000000.png", os.urandom(4 * 1024 * 1024))
    finally:
        cutter.stop()
    assert not moto.storage(bucket).exists("jobs/cut/000000.png")
    assert moto.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_a_presigned_url_serves_the_object_without_credentials(moto):
    storage = moto.storage(moto.new_bucket(), "p")
    storage.put("jobs/j/000001.png", b"\x89PNG signed")
    url = storage.presigned_url("jobs/j/000001.png", 60)
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 200 and reply.content == b"\x89PNG signed"
    assert reply.headers["Content-Type"] == "image/png"
    assert "Signature=" in url  # signed (SigV2 or SigV4 query auth), no credentials needed
    assert LocalStorage("/nonexistent").presigned_url("jobs/j/000001.png", 60) is None


def test_an_unreachable_s3_is_a_typed_error():
    storage = S3Storage("nowhere", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                        access_key_id="k", secret_access_key="s", timeout=1)
    with pytest.raises(StorageUnavailable) as caught:
        storage.open("jobs/x/000000.png")
    assert caught.value.status == 503 and caught.value.retry_after


def test_settings_pick_the_backend(tmp_path):
    assert isinstance(storage_from_settings(Settings(data_dir=tmp_path)), LocalStorage)
    assert storage_from_settings(Settings(data_dir=tmp_path)).root == tmp_path / "results"
    assert storage_from_settings(Settings(storage_url=f"file://{tmp_path}/x")).root == tmp_path / "x"
    s3 = storage_from_settings(Settings(storage_url="s3://bucket/a/b/", s3_endpoint_url="http://127.0.0.1:9"))
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket", "a/b")
    for bad in ("s3:///prefix", "gs://bucket", "bucket/prefix"):
        with pytest.raises(ConfigError, match="GENQ_STORAGE_URL"):
            storage_from_settings(Settings(storage_url=bad))


def test_genq_s3_settings_reach_the_server(moto, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    bucket = moto.new_bucket()
    monkeypatch.setenv("GENQ_STORAGE_URL", f"s3://{bucket}/via-genq")
    monkeypatch.setenv("GENQ_S3_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("GENQ_S3_REGION", "us-east-1")
    monkeypatch.setenv("GENQ_S3_ACCESS_KEY_ID", CREDENTIALS["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("GENQ_S3_SECRET_ACCESS_KEY", CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    storage_from_settings(Settings()).put("jobs/g/000000.png", b"genq")
    assert moto.storage(bucket).get("via-genq/jobs/g/000000.png") == b"genq"


def test_standard_aws_variables_reach_the_server(moto, monkeypatch):
    bucket = moto.new_bucket()
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": moto.url}.items():
        monkeypatch.setenv(name, value)
    storage_from_settings(Settings(storage_url=f"s3://{bucket}")).put("jobs/a/000000.png", b"aws")
    assert moto.storage(bucket).get("jobs/a/000000.png") == b"aws"


def test_a_forked_child_makes_its_own_client(moto):
    """A Celery pool child forked after the storage was used must not share the parent's
    connection pool."""
    storage = moto.storage(moto.new_bucket())
    storage.put("jobs/f/000000.png", b"parent")
    parent_client = storage.client
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write through the storage, report whether the client was new
        try:
            storage.put("jobs/f/000001.png", b"child")
            os.write(write, b"new" if storage.client is not parent_client else b"shared")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"new"
    assert storage.get("jobs/f/000001.png") == b"child" and storage.client is parent_client


def test_delete_prefix_removes_one_jobs_outputs_and_nothing_else(storage):
    for index in range(3):
        storage.put(output_key("job-1", index, "png"), b"png")
    storage.put(output_key("job-10", 0, "png"), b"png")  # a job whose id starts with the other's
    assert storage.delete_prefix("jobs/job-1/") == 3
    assert list(storage.keys()) == [output_key("job-10", 0, "png")]
    assert storage.delete_prefix("jobs/job-1/") == 0  # again: nothing left, not an error
    with pytest.raises(ValueError):
        storage.delete_prefix("jobs/job-10")  # a prefix names a whole directory
    with pytest.raises(ValueError):
        storage.delete_prefix("")


def test_a_local_file_delete_prefix_could_not_delete_is_an_error_and_stays(tmp_path, monkeypatch):
    """Retention forgets a removed job's outputs once delete_prefix returns: a file left
    behind silently would stay for ever."""
    local = LocalStorage(tmp_path)
    for index in range(2):
        local.put(output_key("job-1", index, "png"), b"png")
    unlink = os.unlink

    def refuse_the_first(path, *args, **kwargs):
        if str(path).endswith("0.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_the_first)
    with pytest.raises(PermissionError):
        local.delete_prefix("jobs/job-1/")
    assert output_key("job-1", 0, "png") in set(local.keys())
