"""The web console in a real browser: Debian's Chromium, driven by Playwright, against a
`genq up` (the demo models, built at --quick size) over real HTTP.

A person signs in (a wrong key first), submits ten digit prompts to demo-image, watches
the bar reach 100 % without a reload, sees ten thumbnails, opens one full size,
downloads the archive, starts a 500-item text job and cancels it from its page, and
reads the models page. A screenshot of each page is saved under
var/test-artifacts/console/ (the path is printed). Any script error or CSP violation
the browser reports fails the test.

`make test` installs chromium when it is missing; the test skips, saying so, only where
it is still not installed (or the playwright package is not).
"""
from __future__ import annotations

import io
import json
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from genq.devstack import free_port
from tests.helpers.up import REPO_ROOT, UpProcess
from worker.demo import build_demo_models, demo_registry_entries

pytestmark = pytest.mark.integration
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[test]')")

ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "console"
DIGITS = [f"a {digit}" for digit in range(10)]
TEXT_ITEMS = 500
EXPECTED_401 = "Failed to load resource: the server responded with a status of 401"  # the wrong key's answer


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed and could not be (make test runs: apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def chromium() -> str:
    """Looked for first, so that a machine without it skips before building anything."""
    return chromium_path()


@pytest.fixture(scope="module")
def up(tmp_path_factory, chromium):
    root = tmp_path_factory.mktemp("console")
    build_demo_models(root / "models", quick=True, progress=lambda line: None)
    models_file = root / "models.yaml"
    entries = demo_registry_entries(root / "models")
    entries["models"]["absent-hub"] = {"task": "text-generation", "source": "example-org/absent-model"}  # no weights here
    models_file.write_text(yaml.safe_dump(entries))
    process = UpProcess(root / "var", models_file, free_port())
    process.wait_up(timeout=300)
    yield process
    if process.process.poll() is None:
        process.stop()
    for leftover in process.leftovers():
        leftover.kill()


@pytest.fixture
def page(up, chromium):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.problems = []  # script errors, and console errors (a CSP violation is reported as one)
        page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
        page.on("console", lambda message: message.type == "error" and not message.text.startswith(EXPECTED_401)
                and page.problems.append(message.text))
        yield page
        context.close()
        browser.close()


def shoot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def percents(page) -> str:
    return page.locator("#job-percent").inner_text()


def test_a_person_submits_watches_browses_and_cancels_in_the_console(up, page, capsys):
    started = time.monotonic()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        walk_through(up, page)
    except Exception:  # what the person saw, and what the service said
        shoot(page, "failed")
        print(f"at {page.url}; alert: {page.locator('#alert').inner_text(timeout=1000)!r}\n{up.output()[-4000:]}")
        raise
    assert page.problems == []
    with capsys.disabled():
        print(f"\nconsole screenshots: {ARTIFACTS} ({len(list(ARTIFACTS.glob('*.png')))} files); "
              f"browser run {time.monotonic() - started:.1f} s")


def walk_through(up, page) -> None:
    expect = sync_api.expect
    key = (up.data_dir / "api-key").read_text().strip()

    # Signed out, the console sends a person to sign in; a wrong key is told so, clearly.
    page.goto(up.url + "/")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2F$"))
    shoot(page, "1-sign-in")
    page.fill("#api-key", "genq_0000_not-a-real-key")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#alert")).to_contain_text("That API key was not accepted")
    shoot(page, "2-sign-in-wrong-key")

    # The right key, typed and sent with the keyboard; kept in session storage only.
    page.fill("#api-key", "")
    page.focus("#api-key")
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page).to_have_url(up.url + "/")
    assert page.evaluate("sessionStorage.getItem('genq.apiKey')") == key
    assert page.context.cookies() == [] and key not in page.url

    # Ten digits to demo-image: the form shows the model's defaults and limits.
    page.goto(up.url + "/submit")
    absent = page.locator('#model option[value="absent-hub"]')  # its weights are missing: it cannot be chosen
    expect(absent).to_be_disabled()
    expect(absent).to_contain_text("unavailable: its weights are not in this machine's Hugging Face cache")
    page.select_option("#model", "demo-image")
    expect(page.locator("#model-facts")).to_contain_text('"num_inference_steps":25')
    width = page.locator("#p-text-to-image-width")
    expect(width).to_have_value("64")
    assert width.get_attribute("max") == "512"  # the registry's limit, not the task's 4096
    page.fill("#prompts", "\n".join(DIGITS))
    expect(page.locator("#prompts-count")).to_have_text("10 prompts")
    page.fill("#seed", "7")
    shoot(page, "3-submit")
    page.focus("#submit-button")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    job_url = page.url

    # The bar moves to 100 % without a reload; ten thumbnails fill in.
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    seen = set()
    deadline = time.monotonic() + 240
    while percents(page) != "100 %" and time.monotonic() < deadline:
        seen.add(percents(page))
        time.sleep(0.1)
    assert percents(page) == "100 %", seen
    assert navigations == [] and page.url == job_url
    expect(page.locator("#job-state")).to_have_text("succeeded")
    thumbnails = page.locator("#gallery img")
    expect(thumbnails).to_have_count(10)
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)")
    expect(page.locator("#items-table tbody tr")).to_have_count(10)
    gallery = shoot(page, "4-job-gallery")

    # One thumbnail opened full size, from the keyboard, and closed with Escape.
    page.focus("#gallery li:nth-child(4) button")
    page.keyboard.press("Enter")
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-caption")).to_contain_text('"a 3", seed 10')
    assert page.evaluate("document.getElementById('viewer-image').naturalWidth") == 64  # demo-image's display size
    shoot(page, "5-job-image-full-size")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # All results as one archive, streamed by the server.
    with page.expect_download() as download:
        page.click("#job-download")
    archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    assert sum(name.startswith("images/") for name in archive.namelist()) == 10
    assert len(archive.read("items.jsonl").decode().splitlines()) == 10

    # The jobs list: state, counts, a full bar; filtered by state.
    page.goto(up.url + "/")
    row = page.locator("#jobs-table tbody tr").first
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("10/10")
    expect(row.locator(".percent")).to_have_text("100 %")
    page.select_option("#state-filter", "failed")
    expect(page.locator("#jobs-table tbody")).to_contain_text("No jobs.")
    page.select_option("#state-filter", "succeeded")  # this job, and genq up's self-check
    expect(page.locator("#jobs-table tbody tr").first).to_contain_text("10/10")
    assert "state=succeeded" in page.url
    shoot(page, "6-jobs")

    # 500 text prompts from a .jsonl file (each with its seed), cancelled from the job's page while they run.
    page.goto(up.url + "/submit")
    page.select_option("#model", "demo-text")
    lines = "\n".join(json.dumps({"prompt": f"prompt {i}", "seed": 1000 + i}) for i in range(TEXT_ITEMS))
    page.set_input_files("#prompts-file", {"name": "prompts.jsonl", "mimeType": "application/jsonl",
                                           "buffer": lines.encode()})
    expect(page.locator("#prompts-count")).to_have_text(f"{TEXT_ITEMS} prompts (seeds from the file)")
    page.focus("#submit-button")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    expect(page.locator("#job-state")).to_have_text("running", timeout=60_000)
    page.locator("#job-cancel").click()
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=120_000)
    counts = page.locator("#job-items").inner_text()  # "500/500, 430 cancelled": every item ended
    assert counts.startswith(f"{TEXT_ITEMS}/{TEXT_ITEMS}") and int(re.search(r"(\d+) cancelled", counts).group(1)) > 0
    expect(page.locator("#job-cancel")).to_be_hidden()
    expect(page.locator("#items-table tbody tr").nth(1)).to_contain_text("prompt 1")
    expect(page.locator("#items-table tbody tr").nth(1)).to_contain_text("1001")
    shoot(page, "7-job-cancelled")

    # A finished job says when it expires, and can be deleted from its page (after a confirmation).
    cancelled_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-expires")).not_to_have_text("never")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#job-delete").click()
    page.wait_for_url(up.url + "/")
    assert up.get(f"/v1/jobs/{cancelled_id}").status_code == 404

    # The models page: each model's task, defaults and limits, and that a worker serves it now.
    page.goto(up.url + "/models")
    models = page.locator("#models-table tr[data-model]")
    assert models.count() >= 2  # demo-text and demo-image at least
    expect(page.locator("#models-table .served.yes")).to_have_count(models.count(), timeout=15_000)
    expect(page.locator("#models-table")).to_contain_text("text-to-image")
    shoot(page, "8-models")

    shutil.copyfile(gallery, ARTIFACTS / "gallery.png")
