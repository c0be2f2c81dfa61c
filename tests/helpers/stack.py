"""A running genq stack for integration tests: web and worker subprocesses against the
test's own Redis and database, driven over HTTP."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import requests

from migrations import upgrade
from shared.db import session_scope
from shared.keys import create_api_key
from shared.states import TERMINAL
from tests.helpers.processes import ServiceProcess, free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


class Stack:
    def __init__(self, root: Path, database_url: str, redis_url: str, models_file: Path, **settings: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.redis_url = redis_url
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = dict(
            os.environ,
            GENQ_DATA_DIR=str(self.root / "var"),
            GENQ_DATABASE_URL=database_url,
            GENQ_REDIS_URL=redis_url,
            GENQ_MODELS_FILE=str(models_file),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(REPO_ROOT),  # workers import tests.fault_runner
            **{f"GENQ_{k.upper()}": str(v) for k, v in settings.items()},
        )
        self.processes: dict[str, ServiceProcess] = {}

    def genq(self, name: str, *args: str) -> ServiceProcess:
        process = ServiceProcess(name, [sys.executable, "-m", "genq", *args], self.env, self.root)
        self.processes[name] = process
        return process

    def migrate(self) -> None:
        """Apply migrations and make the API key this stack's requests carry."""
        upgrade(self.database_url)
        with session_scope(self.database_url) as session:
            _row, self.api_key = create_api_key(session, "tests")

    def start_web(self) -> ServiceProcess:
        web = self.genq("web", "web", "--port", str(self.port), "--workers", "1")
        wait_for(self._healthy, 30, what="the web server")
        return web

    def start_worker(self, name: str = "worker", gpus: str = "none", models: str = "") -> ServiceProcess:
        args = ["worker", "--gpus", gpus] + (["--models", models] if models else [])
        worker = self.genq(name, *args)
        wait_for(lambda: "ready." in worker.log() or not worker.alive(), 60, what=f"{name} to be ready")
        assert worker.alive(), worker.log()
        return worker

    def start_reconciler(self) -> ServiceProcess:
        return self.genq("reconciler", "reconcile")

    def pool_children(self, name: str = "worker") -> list:
        """The Celery pool processes under a worker launcher (launcher -> worker.main -> pool)."""
        import psutil

        launcher = psutil.Process(self.processes[name].pid)
        return [pool for main in launcher.children() for pool in main.children()]

    @property
    def storage_dir(self) -> Path:
        return self.root / "var" / "results"

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    # --- HTTP ---------------------------------------------------------------------
    def new_key(self, tenant: str) -> str:
        with session_scope(self.database_url) as session:
            return create_api_key(session, tenant)[1]

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    def get(self, path: str, key: str | None = None, **kwargs) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", timeout=30, headers=self.auth(key), **kwargs)

    def post(self, path: str, key: str | None = None, **kwargs) -> requests.Response:
        return requests.post(f"{self.base_url}{path}", timeout=60, headers=self.auth(key), **kwargs)

    def submit(self, body: dict, key: str | None = None) -> str:
        response = self.post("/v1/jobs", key=key, json=body)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def wait_terminal(self, job_id: str, timeout: float = 180, key: str | None = None) -> dict:
        def finished():
            job = self.get(f"/v1/jobs/{job_id}", key=key).json()
            return job if job["state"] in TERMINAL else None

        return wait_for(finished, timeout, interval=0.2, what=f"job {job_id} to finish")

    def items(self, job_id: str) -> list[dict]:
        items, offset = [], 0
        while offset is not None:
            page = self.get(f"/v1/jobs/{job_id}/items", params={"offset": offset, "limit": 1000}).json()
            items += page["items"]
            offset = page["next_offset"]
        return items

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
