"""`genq up` as a test drives it: its output collected, every process it ever started
tracked, its data directory and key at hand."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import requests

from genq.devstack import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


class UpProcess:
    """`genq up` with its output collected, and every process it ever started tracked."""

    def __init__(self, data_dir, models_file, port, **env):
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
        environment.update(GENQ_DATA_DIR=str(data_dir), GENQ_MODELS_FILE=str(models_file), GENQ_WEB_PROCESSES="1",
                           GENQ_RECONCILE_INTERVAL_SECONDS="1", PYTHONPATH=str(REPO_ROOT), **env)
        self.env = environment
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-m", "genq", "up", "--port", str(port), "--gpus", "none"],
                                        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.descendants: dict[int, psutil.Process] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def track_descendants(self) -> None:
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait_up(self, timeout=120):
        wait_for(lambda: "genq is up" in self.output() or self.process.poll() is not None, timeout, what="genq up")
        assert "genq is up" in self.output(), self.output()[-4000:]
        self.track_descendants()

    def genq(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "genq", *args], env=dict(self.env, GENQ_URL=self.url),
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> int:
        self.track_descendants()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def leftovers(self) -> list[psutil.Process]:
        return [p for p in self.descendants.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    # --- what a test asks of a running instance ---------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.env["GENQ_DATA_DIR"])

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'genq.db'}"

    def services(self) -> dict:
        return json.loads((self.data_dir / "services.json").read_text())["services"]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.data_dir / 'api-key').read_text().strip()}"}

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers(), timeout=10, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, headers=self.headers(), timeout=30, **kwargs)
