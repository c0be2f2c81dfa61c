"""The web console's pages as the server renders them (the browser test,
tests/integration/test_browser.py, drives them in Chromium), and the two /v1 operations
they use beside the rest of the API: a job's archive and the workers answering now."""
from __future__ import annotations

import io
import json
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shared.db import session_scope
from shared.orm import Job as JobRow
from shared.storage import output_key, storage_from_settings
from tests.helpers.ledger import work_by_hand
from tests.web.conftest import make_key
from web.app import create_app
from web.workers import FRESH_SECONDS, LastAnswer, WorkerInfo

PAGES = ("/", "/submit", "/models", "/signin", "/jobs/0123456789abcdef0123456789abcdef")
STATIC = Path(__file__).resolve().parents[2] / "web" / "static"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


class Markup(HTMLParser):
    """What a page's HTML holds that the CSP would refuse, and its structure."""

    def __init__(self):
        super().__init__()
        self.scripts: list[dict] = []
        self.inline: list[str] = []
        self.ids: list[str] = []
        self.labels_for: list[str] = []
        self.controls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs)
        if tag == "style" or "style" in attrs or any(name.startswith("on") for name in attrs):
            self.inline.append(f"<{tag} {attrs}>")
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "label" and "for" in attrs:
            self.labels_for.append(attrs["for"])
        if tag in ("input", "select", "textarea") and attrs.get("type") != "hidden":
            self.controls.append(attrs.get("id", ""))

    def handle_data(self, data):
        self.text.append(data)


def parse(response) -> Markup:
    markup = Markup()
    markup.feed(response.get_data(as_text=True))
    return markup


@pytest.fixture
def browser(app):
    """A client without any key: the pages are shells that need none."""
    return app.test_client()


@pytest.mark.parametrize("path", PAGES)
def test_every_page_is_html_under_a_strict_csp(browser, path):
    response = browser.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'self';") and "unsafe" not in csp
    assert response.headers["X-Frame-Options"] == "DENY" and response.headers["Cache-Control"] == "no-store"
    markup = parse(response)
    assert markup.inline == []  # no <style>, style= or on*= attribute: the CSP would block them
    assert [script.get("src") for script in markup.scripts] == ["/console/static/console.js"]
    assert len(markup.ids) == len(set(markup.ids))
    assert all(control in markup.labels_for for control in markup.controls), (markup.controls, markup.labels_for)
    text = " ".join(markup.text)
    assert "turn JavaScript on" in text  # the <noscript> note says what the page needs


def test_the_home_page_is_the_console_not_a_redirect(browser):
    response = browser.get("/")
    assert response.status_code == 200
    markup = parse(response)
    assert "Jobs" in " ".join(markup.text) and "state-filter" in markup.ids


def test_the_models_page_is_readable_without_javascript(browser, registry):
    text = " ".join(parse(browser.get("/models")).text)
    for spec in registry:
        assert spec.name in text and spec.task.value in text
    assert "max_new_tokens" in text and "≤ 128" in text  # tiny-text's registry limit


def test_the_submit_form_has_each_tasks_parameters_with_their_bounds(browser, settings):
    html = browser.get("/submit").get_data(as_text=True)
    assert f'data-max-items="{settings.max_items_per_job}"' in html
    assert re.search(r'id="p-text-to-image-width"[^>]*step="8"[^>]*min="8"[^>]*max="4096"', html, re.S)
    assert re.search(r'id="p-text-generation-do_sample"[^>]*type|type="checkbox" id="p-text-generation-do_sample"', html)
    assert 'id="priority" name="priority" min="0" max="9"' in html
    for name in ("tiny-text", "tiny-sd", "tiny-uncond"):
        assert f'<option value="{name}"' in html


def test_static_files_are_served_and_the_key_stays_in_session_storage(browser):
    script = browser.get("/console/static/console.js")
    assert script.status_code == 200 and script.mimetype in ("text/javascript", "application/javascript")
    assert browser.get("/console/static/console.css").status_code == 200
    source = (STATIC / "console.js").read_text()
    assert "sessionStorage" in source
    for leak in ("localStorage", "document.cookie", "console.log", "innerHTML", "?key=", "api_key="):
        assert leak not in source, leak


def test_the_api_still_answers_json_and_needs_a_key(browser):
    response = browser.get("/v1/jobs")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
    assert browser.get("/docs").status_code == 200


def image_job(client, settings, prompts: int = 3) -> str:
    job_id = client.post("/v1/jobs", json={"model": "tiny-sd", "prompts": [f"p{i}" for i in range(prompts)],
                                           "params": {"seed": 10}}).get_json()["id"]
    storage = storage_from_settings(settings)
    outcomes = []
    for index in range(prompts - 1):
        storage.put(output_key(job_id, index, "png"), PNG + bytes([index]))
        outcomes.append({"key": output_key(job_id, index, "png")})
    work_by_hand(settings.database_url, "tiny-sd", [*outcomes, RuntimeError("boom")])
    return job_id


def read_zip(response) -> zipfile.ZipFile:
    assert response.status_code == 200 and response.mimetype == "application/zip", response.get_data()[:300]
    assert 'filename="genq-' in response.headers["Content-Disposition"]
    return zipfile.ZipFile(io.BytesIO(response.get_data()))


def test_the_archive_holds_the_job_every_item_and_every_image(client, settings):
    job_id = image_job(client, settings)
    archive = read_zip(client.get(f"/v1/jobs/{job_id}/archive"))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == ["images/000000.png", "images/000001.png", "items.jsonl", "job.json"]
    job = json.loads(archive.read("job.json"))
    assert job["id"] == job_id and job["state"] == "failed" and job["counts"]["failed"] == 1
    records = [json.loads(line) for line in archive.read("items.jsonl").decode().splitlines()]
    assert [(r["index"], r["prompt"], r["seed"], r["state"]) for r in records] == [
        (0, "p0", 10, "succeeded"), (1, "p1", 11, "succeeded"), (2, "p2", 12, "failed")]
    assert records[2]["error"] == "boom" and records[2]["image"] is None
    for index in (0, 1):
        assert archive.read(records[index]["image"]) == PNG + bytes([index])


def test_the_archive_of_a_text_job_pages_through_its_items(app, settings, client):
    settings.max_page_size = 2  # three pages of items for five items
    job_id = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": list("abcde")}).get_json()["id"]
    work_by_hand(settings.database_url, "tiny-text", ["t0", "t1", "t2"], settle=False)
    archive = read_zip(client.get(f"/v1/jobs/{job_id}/archive"))
    assert sorted(archive.namelist()) == ["items.jsonl", "job.json"]
    records = [json.loads(line) for line in archive.read("items.jsonl").decode().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["text"] for r in records] == ["t0", "t1", "t2", None, None]
    assert [r["state"] for r in records] == ["succeeded"] * 3 + ["pending"] * 2


def test_another_tenants_archive_is_not_found_and_an_admin_sees_it(app, client, settings):
    job_id = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"]}).get_json()["id"]
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_key(settings, 'globex')}"
    assert other.get(f"/v1/jobs/{job_id}/archive").status_code == 404
    assert app.test_client().get(f"/v1/jobs/{job_id}/archive").status_code == 401
    admin = app.test_client()
    admin.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_key(settings, 'ops', admin=True)}"
    assert admin.get(f"/v1/jobs/{job_id}/archive").status_code == 200
    with session_scope(settings.database_url) as session:
        assert session.get(JobRow, job_id).tenant == "acme"


def test_no_worker_answers_when_none_runs(settings, redis_server, api_key):
    settings.worker_inspect_seconds = 0.2
    client = create_app(settings).test_client()
    response = client.get("/v1/workers", headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 200 and response.get_json() == {"workers": []}
    assert client.get("/v1/workers").status_code == 401


def test_the_workers_are_asked_once_while_their_answer_is_fresh():
    """Every open models page polls GET /v1/workers; a web process broadcasts the question
    at most once per FRESH_SECONDS, and concurrent requests share the question in flight."""
    answers, asked = LastAnswer(), []

    def ask():
        asked.append(1)
        time.sleep(0.2)  # the broadcast's wait for answers
        return [WorkerInfo(name=f"w{len(asked)}@host", models=["tiny-text"])]

    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(lambda _: answers.get(ask), range(4)))
    assert len(asked) == 1 and all(workers[0].name == "w1@host" for workers in seen)
    answers._asked_at -= FRESH_SECONDS  # the answer ages
    assert answers.get(ask)[0].name == "w2@host" and len(asked) == 2
