"""An item's output as a client downloads it: streamed from the configured storage with
its length, or a redirect to a presigned URL on S3 (`?redirect=1`); bad input and a
missing object are clear 4xx answers."""
from __future__ import annotations

import pytest
import requests
from pydantic import SecretStr

from shared.settings import Settings
from shared.storage import output_key, storage_from_settings
from tests.helpers.ledger import work_by_hand
from tests.helpers.s3 import CREDENTIALS, MotoServer

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 300


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage_settings(request, settings) -> Settings:
    if request.param == "local":
        return settings
    moto = request.getfixturevalue("moto")
    return settings.model_copy(update={
        "storage_url": f"s3://{moto.new_bucket()}/web", "s3_endpoint_url": moto.url,
        "s3_region": CREDENTIALS["AWS_DEFAULT_REGION"], "s3_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "s3_secret_access_key": SecretStr(CREDENTIALS["AWS_SECRET_ACCESS_KEY"])})


@pytest.fixture
def app_settings(storage_settings):
    return storage_settings


def image_job(client, settings) -> tuple[str, str]:
    job_id = client.post("/v1/jobs", json={"model": "tiny-sd", "prompts": ["x"]}).get_json()["id"]
    key = output_key(job_id, 0, "png")
    storage_from_settings(settings).put(key, PNG)
    work_by_hand(settings.database_url, "tiny-sd", [{"key": key}])
    return job_id, key


def test_an_image_streams_with_its_length(client, storage_settings):
    job_id, _ = image_job(client, storage_settings)
    response = client.get(f"/v1/jobs/{job_id}/items/0/output")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.is_streamed and response.content_length == len(PNG)
    assert response.get_data() == PNG


def test_redirect_is_a_presigned_url_on_s3_and_the_bytes_on_disk(client, storage_settings):
    job_id, key = image_job(client, storage_settings)
    response = client.get(f"/v1/jobs/{job_id}/items/0/output?redirect=1")
    if storage_settings.storage_url:
        assert response.status_code == 302 and response.headers["Cache-Control"] == "no-store"
        assert key in response.headers["Location"]
        assert requests.get(response.headers["Location"], timeout=10).content == PNG
    else:
        assert response.status_code == 200 and response.get_data() == PNG
    assert client.get(f"/v1/jobs/{job_id}/items/0/output?redirect=0").get_data() == PNG


def test_a_bad_redirect_value_is_a_400_naming_it(client, storage_settings):
    job_id, _ = image_job(client, storage_settings)
    response = client.get(f"/v1/jobs/{job_id}/items/0/output?redirect=later")
    assert response.status_code == 400
    assert response.get_json()["error"] | {"message": None} == {"code": "invalid_request", "field": "redirect", "message": None}


def test_a_missing_object_is_a_404(client, storage_settings):
    job_id, key = image_job(client, storage_settings)
    storage_from_settings(storage_settings).delete(key)
    response = client.get(f"/v1/jobs/{job_id}/items/0/output")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_unreachable_storage_is_a_503_with_retry_after(client, storage_settings):
    if not storage_settings.storage_url:
        pytest.skip("a local directory is never unreachable")
    job_id, _ = image_job(client, storage_settings)
    from genq.devstack import free_port

    client.application.extensions["genq"].storage = storage_from_settings(storage_settings.model_copy(update={
        "s3_endpoint_url": f"http://127.0.0.1:{free_port()}", "s3_timeout_seconds": 1}))
    response = client.get(f"/v1/jobs/{job_id}/items/0/output")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "storage_unavailable"
    assert response.headers["Retry-After"]
