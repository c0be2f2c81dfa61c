"""The genq Python client: a small SDK over the HTTP API (never the database).

    from genq.client import Client

    client = Client("http://127.0.0.1:8000", key)        # key: default var/api-key
    job = client.submit("demo-text", ["The module", "Return the"], params={"seed": 1})
    job.wait(progress=True)                               # a progress bar on stderr
    for result in job.results():                          # text, or PNG bytes in .image
        print(result.index, result.state, result.text)

Errors form one tree: `ClientError` > `ApiError` (the API refused: `status`, `code`,
`field`), `Unreachable` (no answer), `WaitTimeout`. The transport is a
`requests.Session` you may pass in (retries, proxies, certificates, a test adapter).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import requests

from shared.states import TERMINAL

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_FILE_NAME = "api-key"


class ClientError(Exception):
    """Anything the client could not do."""


class ApiError(ClientError):
    """The API refused a request; carries its JSON error."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message, self.field = status, code, message, field


class Unreachable(ClientError):
    """No answer from the server."""


class WaitTimeout(ClientError):
    """A job did not finish within the time `Job.wait` was given."""


def default_key() -> str | None:
    """The key `genq up` made for this data directory (GENQ_DATA_DIR, default var/)."""
    path = Path(os.environ.get("GENQ_DATA_DIR", "var")) / KEY_FILE_NAME
    return path.read_text().strip() if path.exists() else None


@dataclass(frozen=True)
class Result:
    """One item's outcome, as `Job.results()` gives it."""

    index: int
    state: str
    prompt: str
    seed: int
    text: str | None
    image: bytes | None  # the PNG, for image models
    error: str | None


class Client:
    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, *, timeout: float = 30.0,
                 session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.key = key if key is not None else default_key()
        self.timeout = timeout
        self.session = session or requests.Session()

    # --- jobs -----------------------------------------------------------------------
    def submit(self, model: str, prompts: list[str] | None = None, *, inputs: list[dict] | None = None,
               params: dict[str, Any] | None = None, priority: int | None = None,
               idempotency_key: str | None = None) -> "Job":
        """Submit prompts (or `inputs`: `{"prompt", "seed"}` each); returns the queued job."""
        body: dict[str, Any] = {"model": model, "params": params or {}}
        body.update({"inputs": inputs} if inputs is not None else {"prompts": list(prompts or [])})
        if priority is not None:
            body["priority"] = priority
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        accepted = self.request("POST", "/v1/jobs", json=body, headers=headers).json()
        return Job(self, accepted["id"], accepted)

    def job(self, job_id: str) -> "Job":
        return Job(self, job_id, self.request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(self, state: str | None = None, limit: int = 20) -> list["Job"]:
        params = {"limit": limit, **({"state": state} if state else {})}
        return [Job(self, data["id"], data) for data in self.request("GET", "/v1/jobs", params=params).json()["jobs"]]

    def models(self) -> list[dict]:
        return self.request("GET", "/v1/models").json()["models"]

    # --- the transport --------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        try:
            response = self.session.request(method, self.url + path, headers=headers, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise Unreachable(f"cannot reach genq at {self.url}; is `genq up` running?") from None
        except requests.Timeout:
            raise Unreachable(f"genq at {self.url} did not answer within {self.timeout:g} s") from None
        if response.status_code >= 400:
            raise _api_error(response)
        return response


class Job:
    """A job on the server; `data` is its last fetched status."""

    def __init__(self, client: Client, job_id: str, data: dict | None = None):
        self.client, self.id, self.data = client, job_id, data or {}

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.data.get('state', '?')}>"

    @property
    def state(self) -> str:
        return self.data["state"]

    @property
    def done(self) -> bool:
        return self.data.get("state") in TERMINAL

    def refresh(self) -> "Job":
        self.data = self.client.request("GET", f"/v1/jobs/{self.id}").json()
        return self

    def wait(self, *, progress: bool = False, interval: float = 0.5, timeout: float | None = None) -> "Job":
        """Poll until the job is finished; with `progress`, draw a bar on stderr."""
        from genq.progress import ProgressBar  # the bar is for terminals; light to import

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        while True:
            self.refresh()
            if progress:
                bar = bar or ProgressBar(self.data["counts"]["total"])
                counts = self.data["counts"]
                bar.update(counts["succeeded"] + counts["failed"] + counts["cancelled"], self.state)
            if self.done:
                if bar:
                    bar.close()
                return self
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job {self.id} is still {self.state} after {timeout:g} s")
            time.sleep(interval)

    def items(self, page_size: int = 500) -> Iterator[dict]:
        offset: int | None = 0
        while offset is not None:
            page = self.client.request("GET", f"/v1/jobs/{self.id}/items",
                                       params={"offset": offset, "limit": page_size}).json()
            yield from page["items"]
            offset = page["next_offset"]

    def results(self) -> Iterator[Result]:
        """Every item with its output: the text, or the PNG's bytes (downloaded)."""
        for item in self.items():
            output = item["output"] or {}
            image = self.client.request("GET", output["image_url"]).content if "image_url" in output else None
            yield Result(item["index"], item["state"], item["prompt"], item["seed"], output.get("text"), image,
                         item["error"])

    def cancel(self) -> "Job":
        self.data = self.client.request("POST", f"/v1/jobs/{self.id}/cancel").json()
        return self

    def retry(self) -> "Job":
        self.data = self.client.request("POST", f"/v1/jobs/{self.id}/retry").json()
        return self


def _api_error(response: requests.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error.get("code", "error"), error.get("message", ""), error.get("field"))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:200])


def read_prompts_file(path: Path) -> tuple[str, list]:
    """One prompt per line, or JSONL lines `{"prompt": ..., "seed": ...}`.
    Returns ("prompts", [...]) or ("inputs", [...]) for the request body."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith("{") for line in lines):
        return "inputs", [json.loads(line) for line in lines]
    return "prompts", lines


def parse_param(text: str) -> tuple[str, Any]:
    """`k=v` with v read as JSON when it is JSON (numbers, true/false), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--param takes key=value, not {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw
