"""Child processes that `genq up` owns: started in order, their output copied to a log
file each and to the terminal with a name prefix, stopped in reverse order."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PREFIX_WIDTH = 10


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    pump: threading.Thread
    log_path: Path


@dataclass
class Supervisor:
    log_dir: Path
    echo: Callable[[str], None] = field(default=lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    children: list[Child] = field(default_factory=list)

    def __post_init__(self):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._echo_lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self._echo_lock:
            self.echo(f"{name:>{PREFIX_WIDTH}} | {line}")

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        """Start a child in its own process group (so a terminal's Ctrl-C reaches only us)."""
        log_path = self.log_dir / f"{name}.log"
        process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, bufsize=1, text=True, errors="replace",
        )
        pump = threading.Thread(target=self._pump, args=(name, process, log_path), daemon=True)
        pump.start()
        child = Child(name, process, pump, log_path)
        self.children.append(child)
        return child

    def run(self, name: str, argv: list[str], env: dict[str, str], abort: Callable[[], bool] = lambda: False) -> int:
        """Run a child to completion (migrations, model builds); stop it if `abort()` says so."""
        child = self.start(name, argv, env)
        while child.process.poll() is None:
            if abort():
                child.process.terminate()
                break
            time.sleep(0.2)
        code = child.process.wait()
        child.pump.join(5)
        self.children.remove(child)
        return code

    def _pump(self, name: str, process: subprocess.Popen, log_path: Path) -> None:
        with open(log_path, "a") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                self.say(name, line.rstrip("\n"))

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM each child (newest first) and wait for it; SIGKILL what outlives `timeout`."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.terminate()
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.say(child.name, f"did not stop in {timeout:.0f}s; killing it")
            self._kill_group(child)
            child.pump.join(5)
        self.children.clear()

    @staticmethod
    def _kill_group(child: Child) -> None:
        """SIGTERM went to the child alone (gunicorn and Celery stop their own processes
        gracefully); SIGKILL to its group leaves nothing behind."""
        try:
            os.killpg(child.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child.process.wait(10)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2, abort: Callable[[], bool] = lambda: False) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if abort():
            return False
        time.sleep(interval)
    return False
