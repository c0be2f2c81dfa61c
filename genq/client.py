"""A small HTTP client of the genq API, used by the command line (never the database)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import requests



class ApiError(Exception):
    """The API refused a request; carries its JSON error."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message, self.field = status, code, message, field


@dataclass
class ApiClient:
    base_url: str
    api_key: str | None = None
    timeout: float = 30.0

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url.rstrip('/')}{path}"
        try:
            response = requests.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise ApiError(0, "unreachable", f"cannot reach genq at {self.base_url}; is `genq up` running?") from None
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    def submit(self, body: dict[str, Any]) -> dict:
        return self._request("POST", "/v1/jobs", json=body).json()

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, state: str | None = None, limit: int = 20) -> list[dict]:
        params = {"limit": limit, **({"state": state} if state else {})}
        return self._request("GET", "/v1/jobs", params=params).json()["jobs"]

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def items(self, job_id: str, page_size: int = 500) -> Iterator[dict]:
        offset: int | None = 0
        while offset is not None:
            page = self._request("GET", f"/v1/jobs/{job_id}/items", params={"offset": offset, "limit": page_size}).json()
            yield from page["items"]
            offset = page["next_offset"]

    def download(self, url_path: str) -> bytes:
        return self._request("GET", url_path).content

    def models(self) -> list[dict]:
        return self._request("GET", "/v1/models").json()["models"]


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
