"""DELETE /v1/jobs/<id> over the API, on local storage and S3: a finished job, its items
and outputs go at once; an open job is refused; another tenant's job is a 404; a job's
status tells when it will expire."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from shared.storage import storage_from_settings
from tests.web.conftest import make_key
from tests.web.test_downloads import image_job, moto, storage_settings  # noqa: F401 (fixtures)


@pytest.fixture
def app_settings(storage_settings):  # noqa: F811
    return storage_settings.model_copy(update={"result_ttl": timedelta(days=7)})


def test_a_finished_job_and_its_outputs_are_deleted_at_once(client, app_settings):
    job_id, key = image_job(client, app_settings)
    status = client.get(f"/v1/jobs/{job_id}").get_json()
    finished = datetime.fromisoformat(status["finished_at"])
    assert datetime.fromisoformat(status["expires_at"]) == finished + timedelta(days=7)
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 204 and response.get_data() == b""
    assert not storage_from_settings(app_settings).exists(key)
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/items/0/output").status_code == 404
    assert job_id not in [job["id"] for job in client.get("/v1/jobs").get_json()["jobs"]]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_an_open_job_is_refused_until_it_has_stopped(client):
    job_id = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["x"]}).get_json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").get_json()["expires_at"] is None
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "conflict" and "cancel it first" in response.get_json()["error"]["message"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").get_json()["state"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204


def test_another_tenants_job_is_a_404_and_stays(client, app, app_settings):
    job_id, key = image_job(client, app_settings)
    other = make_key(app_settings, "other-tenant")
    response = app.test_client().delete(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 404
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200 and storage_from_settings(app_settings).exists(key)
