"""`genq up`: the whole service on one machine, as child processes it owns.

    embedded Redis (unless GENQ_REDIS_URL is set) -> migrations -> demo models (built
    on first start when the registry names them and they are missing) -> reconciler
    -> one worker per GPU (or one CPU worker) -> web server -> a self-check job

Once up, a service that dies is restarted with backoff (see `genq.supervisor`); a child
that dies while `genq up` is still starting stops the start with its log's name. Ctrl-C
or SIGTERM stops every child and exits 0; if `genq up` itself is killed, its children
die with it. A second `genq up` on the same data directory says so and exits 1.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

import requests

from genq.client import KEY_FILE_NAME, Client
from genq.devstack import NoRedisServer, free_port, poll, port_is_free, redis_pings, redis_server_binary
from genq.supervisor import Supervisor, stop_leftovers
from shared.model_files import weights_of
from shared.orm import DEFAULT_TENANT
from shared.registry import Registry, load_registry
from shared.settings import Settings
from web.auth import is_loopback

DEMO_MODELS = ("demo-text", "demo-image", "demo-dcgan", "demo-vae")


class UpError(Exception):
    """genq up cannot start; the message says why."""


class Stopped(Exception):
    """Ctrl-C or SIGTERM arrived while genq up was still starting."""


class InstanceLock:
    """One `genq up` per data directory: an flock, plus a note of who holds it."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / "genq-up.lock"
        self.note = data_dir / "genq-up.json"
        self._handle = None

    def acquire(self) -> None:
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = json.loads(self.note.read_text()) if self.note.exists() else {}
            raise UpError(f"genq up is already running for {self.path.parent} "
                          f"(pid {holder.get('pid', '?')}, {holder.get('url', 'URL unknown')})") from None

    def describe(self, **facts) -> None:
        self.note.write_text(json.dumps({"pid": os.getpid(), **facts}))

    def release(self) -> None:
        self.note.unlink(missing_ok=True)
        if self._handle:
            self._handle.close()


class Up:
    def __init__(self, settings: Settings, port: int | None, gpus: str):
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.port = settings.web_port if port is None else port
        self.url = f"http://{settings.web_host}:{self.port}"
        self.gpus = gpus
        self.supervisor = Supervisor(self.data_dir / "logs", state_file=self.data_dir / "services.json")
        self.env = dict(os.environ, GENQ_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1",
                        GENQ_SUPERVISOR_STATE_FILE=str(self.supervisor.state_file))
        self.stopping = False
        self.embedded_redis = False
        self.api_key: str | None = None

    def genq(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "genq", *args]

    def say(self, line: str) -> None:
        self.supervisor.say("genq", line)

    # --- the story of a start ---------------------------------------------------------
    def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = InstanceLock(self.data_dir)
        lock.acquire()
        signal.signal(signal.SIGTERM, self._ask_to_stop)
        signal.signal(signal.SIGINT, self._ask_to_stop)
        try:
            if self.settings.auth == "off" and not is_loopback(self.settings.web_host):
                raise UpError(f"GENQ_AUTH=off is refused when binding {self.settings.web_host}: loopback only")
            self.stop_leftovers()
            if not port_is_free(self.settings.web_host, self.port):
                raise UpError(f"port {self.port} on {self.settings.web_host} is in use; choose another with --port")
            self.start_redis()
            lock.describe(url=self.url, redis=self.env["GENQ_REDIS_URL"])
            self.migrate()
            self.api_key = self.ensure_api_key()
            registry = self.prepare_models()
            self.start_services()
            self.self_check(registry)
            self.print_banner(registry)
            return self.watch()
        except Stopped:
            self.say("stopped while starting")
            return 0
        finally:
            self.supervisor.stop_all()
            lock.release()

    def stop_leftovers(self) -> None:
        """An earlier `genq up` of this data directory that was killed outright may have
        left services running (where the kernel cannot kill them with it): stop them."""
        stopped = stop_leftovers(self.supervisor.state_file)
        if stopped:
            self.say(f"an earlier genq up of {self.data_dir} was killed and left {', '.join(stopped)} "
                     "running; stopped them (SIGKILL to each one's process group)")

    def _ask_to_stop(self, _signum, _frame) -> None:
        self.stopping = True

    def _stop_asked(self) -> bool:
        if self.stopping:
            raise Stopped()
        return False

    def start_redis(self) -> None:
        if "GENQ_REDIS_URL" in os.environ:
            self.say(f"using Redis at {os.environ['GENQ_REDIS_URL']} (GENQ_REDIS_URL); starting none")
            return
        port = free_port()
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        try:
            binary = redis_server_binary()
        except NoRedisServer as exc:
            raise UpError(str(exc)) from None
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                "--dir", str(redis_dir), "--appendonly", "yes", "--save", ""]
        self.supervisor.start("redis", argv, self.env, parent_death_signal=signal.SIGTERM)  # flushes its AOF
        self.env["GENQ_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        self.embedded_redis = True
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=1)
        self._wait(lambda: redis_pings(client), 20, "the embedded Redis did not start; see logs/redis.log")

    def migrate(self) -> None:
        if self.supervisor.run("migrate", self.genq("db", "upgrade"), self.env, abort=self._stop_asked) != 0:
            raise UpError("database migrations failed; see logs/migrate.log")

    def ensure_api_key(self) -> str | None:
        """On first start, a key for the default tenant, kept in the data directory (mode
        0600) so the command-line client finds it; later starts reuse it."""
        if self.settings.auth == "off":
            return None
        from shared.db import session_scope
        from shared.keys import authenticate, create_api_key

        path = self.data_dir / KEY_FILE_NAME
        url = self.env.get("GENQ_DATABASE_URL", self.settings.database_url)
        with session_scope(url) as session:
            if path.exists() and authenticate(session, path.read_text().strip()) is not None:
                return path.read_text().strip()
            _row, key = create_api_key(session, DEFAULT_TENANT, label="made by genq up")
        path.touch(mode=0o600)
        path.write_text(key + "\n")
        return key

    def prepare_models(self) -> Registry:
        registry = load_registry(self.settings.models_file)
        missing = [spec for spec in registry if spec.name in DEMO_MODELS and spec.local_source() is None]
        if missing:
            out_dir = missing[0].source_path().parent
            names = [spec.name for spec in missing]
            self.say(f"building {', '.join(names)} into {out_dir} (first start only, up to about 5 minutes)")
            build = self.genq("models", "build-demo", "--out", str(out_dir), *(f"--only={name}" for name in names))
            if self.supervisor.run("build-demo", build, self.env, abort=self._stop_asked) != 0:
                raise UpError("building the demo models failed; see logs/build-demo.log")
        return registry

    def start_services(self) -> None:
        self.supervisor.start("reconciler", self.genq("reconcile"), self.env)
        self.supervisor.start("worker", self.genq("worker", "--gpus", self.gpus), self.env)
        web = self.genq("web", "--host", self.settings.web_host, "--port", str(self.port),
                        "--workers", str(self.settings.web_processes),
                        "--access-log", str(self.supervisor.log_dir / "web-access.log"))
        self.supervisor.start("web", web, self.env)
        self._wait(self._web_ready, 60, "the web server did not become ready; see logs/web.log")

    def _wait(self, condition, timeout: float, failure: str) -> None:
        """Wait for a child to be ready; a Ctrl-C or a child that died ends the wait."""
        if not poll(condition, timeout, interval=0.2,
                    abort=lambda: self._stop_asked() or self.supervisor.first_dead() is not None):
            raise UpError(failure)

    def _web_ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=2).ok
        except requests.RequestException:
            return False

    def self_check(self, registry: Registry) -> None:
        """Run one real item through the whole path, so the banner shows it working."""
        text_models = [spec.name for spec in registry
                       if spec.task.value == "text-generation" and weights_of(spec).available]
        if not text_models:
            return
        model = text_models[0]
        started = time.monotonic()
        job = Client(self.url, self.api_key or "", timeout=10).submit(model, ["genq is"])
        if not poll(lambda: job.refresh().done, 120, interval=0.2, abort=self._stop_asked):
            self.say(f"self-check: {model} did not answer within 120 s; see logs/worker.log")
            return
        result = next(job.results())
        text = result.text or result.error
        self.say(f"self-check: {model} answered in {time.monotonic() - started:.1f}s: 'genq is{text[:60]!s}'")

    def print_banner(self, registry: Registry) -> None:
        names = ", ".join(registry.names()) or "(none: edit the registry file)"
        unavailable = [spec.name for spec in registry if not weights_of(spec).available]
        if unavailable:
            names += f" (without weights here: {', '.join(unavailable)}; see genq models list)"
        example = next((spec.name for spec in registry if spec.task.value == "text-generation"), None) or \
            (registry.names() or ["MODEL"])[0]
        redis_note = f"embedded, data in {self.data_dir / 'redis'}" if self.embedded_redis else "external"
        lines = [
            "",
            "genq is up",
            f"  console   {self.url}/  (sign in with the API key below)",
            f"  API       {self.url}/v1  (models: {self.url}/v1/models)",
            f"  docs      {self.url}/docs  (OpenAPI: {self.url}/openapi.json)",
            f"  data      {self.data_dir}  (database, results/, logs/)",
            f"  redis     {self.env['GENQ_REDIS_URL']} ({redis_note})",
            f"  models    {names}",
            f"  API key   {self.api_key}  (tenant default; also in {self.data_dir / KEY_FILE_NAME})"
            if self.api_key else "  API key   none: GENQ_AUTH=off (loopback only)",
            f"  try       genq submit --url {self.url} --model {example} --prompt 'Hello' --wait",
            "  stop      Ctrl-C",
            "",
        ]
        for line in lines:
            self.say(line)

    def watch(self) -> int:
        """Restart what dies (with backoff) until asked to stop."""
        while not self.stopping:
            self.supervisor.supervise()
            time.sleep(0.3)
        self.say("stopping")
        return 0
