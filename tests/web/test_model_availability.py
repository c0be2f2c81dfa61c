"""A registry entry whose weights are not on this machine (a Hugging Face id missing from
the local cache) does not stop the web process: /v1/models and the console's models page
mark it unavailable with the reason, and a job for it is refused with 400
`model_unavailable` before anything is written. Weights copied into the cache later make
it available without a restart."""
from __future__ import annotations

import pytest
import yaml

from shared.db import session_scope
from shared.orm import Job
from tests import tiny_models
from tests.helpers.hub_cache import save_to_hub_cache, use_hub_cache

HUB_TEXT = "org/tiny-text"
REASON = "its weights are not in this machine's Hugging Face cache"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return use_hub_cache(monkeypatch, tmp_path / "hub")


@pytest.fixture
def app_settings(settings, tmp_path, tiny_model_dirs, hub_cache):
    entries = tiny_models.tiny_registry_entries(tiny_model_dirs["text"], tiny_model_dirs["uncond"], tiny_model_dirs["sd"])
    entries["models"]["hub-text"] = {"task": "text-generation", "source": HUB_TEXT, "defaults": {"max_new_tokens": 4}}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(entries))
    return settings.model_copy(update={"models_file": path})


def models_by_name(client) -> dict:
    return {m["name"]: m for m in client.get("/v1/models").get_json()["models"]}


def test_a_model_without_its_weights_is_listed_unavailable_and_its_jobs_are_refused(client, app_settings):
    models = models_by_name(client)
    assert (models["hub-text"]["available"], models["hub-text"]["unavailable_reason"]) == (False, REASON)
    assert (models["tiny-text"]["available"], models["tiny-text"]["unavailable_reason"]) == (True, None)
    response = client.post("/v1/jobs", json={"model": "hub-text", "prompts": ["hello"]})
    assert response.status_code == 400
    assert response.get_json()["error"] == {
        "code": "model_unavailable", "field": "model",
        "message": f"model 'hub-text' is not available: {REASON}; see GET /v1/models"}
    with session_scope(app_settings.database_url) as session:
        assert session.query(Job).count() == 0  # refused before anything was written
    assert client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["hello"]}).status_code == 202


def test_weights_copied_into_the_cache_make_the_model_available_without_a_restart(client, hub_cache,
                                                                                  tiny_model_dirs):
    assert models_by_name(client)["hub-text"]["available"] is False
    save_to_hub_cache(tiny_model_dirs["text"], HUB_TEXT, hub_cache)
    assert models_by_name(client)["hub-text"] == {**models_by_name(client)["hub-text"], "available": True,
                                                  "unavailable_reason": None}
    assert client.post("/v1/jobs", json={"model": "hub-text", "prompts": ["hello"]}).status_code == 202


def test_the_console_models_page_marks_the_unavailable_model(client):
    page = client.get("/models").get_data(as_text=True)
    row = page[page.index('<tr data-model="hub-text">'):]
    row = row[:row.index("</tr>")]
    assert "unavailable" in row and REASON.replace("'", "&#39;") in row
    tiny = page[page.index('<tr data-model="tiny-text">'):]
    assert "unavailable" not in tiny[:tiny.index("</tr>")]
