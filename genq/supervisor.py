"""Child processes that `genq up` owns, supervised like systemd's `Restart=on-failure`.

Each child runs in a session of its own (so a terminal's Ctrl-C reaches only `genq up`),
dies with `genq up` (`PR_SET_PDEATHSIG`, see `shared.processes`), and has its output
copied to a log file and to the terminal with a name prefix. A service that exits is
restarted after a backoff that doubles from 1 s to at most 60 s, and starts again at
1 s once it has stayed up 60 s. Every change is written to a state file that the web
server's /readyz reads, so a client sees which part is down while it is down.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from shared.processes import dies_with_this_process

PREFIX_WIDTH = 10
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
STABLE_AFTER_SECONDS = 60.0  # a child up this long starts its backoff again at 1 s


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: bool
    parent_death_signal: int
    process: subprocess.Popen | None = None
    pump: threading.Thread | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0  # deaths in a row, each within STABLE_AFTER_SECONDS of its start
    restart_at: float | None = None
    last_exit: str | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def state(self) -> dict:
        if self.alive() and self.restart_at is None:
            return {"state": "running", "pid": self.process.pid, "started": _create_time(self.process.pid),
                    "restarts": self.restarts, "last_exit": self.last_exit}
        wait = max(0.0, (self.restart_at or time.monotonic()) - time.monotonic())
        return {"state": "restarting", "pid": None, "restarts": self.restarts, "last_exit": self.last_exit,
                "restart_at": round(time.time() + wait, 3)}  # wall clock: readers compute what is left


def _create_time(pid: int) -> float | None:
    """With the pid, it names one process for good (pids are reused)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def stop_leftovers(state_file: Path) -> list[str]:
    """Kill the services an earlier supervisor of the same state file left running (it was
    killed before it could stop them). Returns "name (pid N)" for each one stopped."""
    try:
        services = json.loads(state_file.read_text())["services"]
    except (OSError, ValueError, KeyError):
        return []
    stopped = []
    for name, service in services.items():
        pid, started = service.get("pid"), service.get("started")
        if pid is None or started is None or _create_time(pid) != started:
            continue
        try:
            os.killpg(pid, signal.SIGKILL)  # each was the leader of its own session
        except (ProcessLookupError, PermissionError):
            continue
        stopped.append(f"{name} (pid {pid})")
    state_file.unlink(missing_ok=True)
    return stopped


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def backoff_seconds(quick_deaths: int) -> float:
    """1, 2, 4, ... seconds for the 1st, 2nd, 3rd quick death in a row, at most 60."""
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** max(0, quick_deaths - 1))


@dataclass
class Supervisor:
    log_dir: Path
    state_file: Path | None = None
    echo: Callable[[str], None] = field(default=lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    children: list[Child] = field(default_factory=list)

    def __post_init__(self):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._echo_lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self._echo_lock:
            self.echo(f"{name:>{PREFIX_WIDTH}} | {line}")

    # --- starting -------------------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict[str, str], restart: bool = True,
              parent_death_signal: int = signal.SIGKILL) -> Child:
        """Start a service. With `restart`, `supervise()` restarts it when it exits."""
        child = Child(name, argv, env, self.log_dir / f"{name}.log", restart, parent_death_signal)
        self._spawn(child)
        self.children.append(child)
        self.write_state()
        return child

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.argv, env=child.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=dies_with_this_process(child.parent_death_signal),
            bufsize=1, text=True, errors="replace",
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        child.pump = threading.Thread(target=self._pump, args=(child.name, child.process, child.log_path), daemon=True)
        child.pump.start()

    def run(self, name: str, argv: list[str], env: dict[str, str], abort: Callable[[], bool] = lambda: False) -> int:
        """Run a child to completion (migrations, model builds); stop it if `abort()` says so."""
        child = self.start(name, argv, env, restart=False)
        while child.process.poll() is None:
            if abort():
                child.process.terminate()
                break
            time.sleep(0.2)
        code = child.process.wait()
        child.pump.join(5)
        self.children.remove(child)
        self.write_state()
        return code

    def _pump(self, name: str, process: subprocess.Popen, log_path: Path) -> None:
        with open(log_path, "a") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                self.say(name, line.rstrip("\n"))

    # --- supervising ----------------------------------------------------------------
    def first_dead(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def supervise(self) -> None:
        """One look at every service: schedule a restart for one that exited, and restart
        those whose backoff has passed. Called every few tenths of a second."""
        now = time.monotonic()
        for child in self.children:
            if not child.restart:
                continue
            if child.restart_at is None and child.process.poll() is not None:
                self._schedule_restart(child, now)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
                self.say(child.name, f"restarted (pid {child.process.pid}, restart {child.restarts})")
                self.write_state()

    def _schedule_restart(self, child: Child, now: float) -> None:
        child.last_exit = describe_exit(child.process.returncode)
        uptime = now - child.started_at
        child.quick_deaths = 1 if uptime >= STABLE_AFTER_SECONDS else child.quick_deaths + 1
        delay = backoff_seconds(child.quick_deaths)
        self._kill_group(child)  # what it started (pool children, web workers) goes with it
        child.pump.join(2)
        child.restart_at = now + delay
        self.say(child.name, f"exited with {child.last_exit} after {uptime:.1f} s; restarting in {delay:.0f} s")
        self.write_state()

    def write_state(self) -> None:
        """The services' states, for /readyz: written whole and renamed into place."""
        if self.state_file is None:
            return
        states = {c.name: c.state() for c in self.children if c.restart}
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"supervisor_pid": os.getpid(), "services": states}))
        temporary.replace(self.state_file)

    def pids(self) -> dict[str, int]:
        return {c.name: c.process.pid for c in self.children if c.alive()}

    # --- stopping -------------------------------------------------------------------
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
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    @staticmethod
    def _kill_group(child: Child) -> None:
        """SIGTERM went to the child alone (gunicorn and Celery stop their own processes
        gracefully); SIGKILL to its group leaves nothing behind."""
        try:
            os.killpg(child.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child.process.wait(10)
