"""Processes that die with their parent.

A child in a session of its own (so a terminal's Ctrl-C reaches only its supervisor)
is not killed when that supervisor is: the kernel simply reparents it. On Linux,
`PR_SET_PDEATHSIG` asks the kernel to signal the child when the thread that started it
exits; the setting survives `exec` (gunicorn behind `genq web`), so each level sets it
for the level below (genq up -> its services; the worker launcher -> one process per
GPU; Celery's pool child and gunicorn's workers in their fork hooks). Elsewhere these
calls do nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL, parent_pid: int | None = None) -> None:
    """Have the kernel send `signum` to this process when its parent exits. If the parent
    (`parent_pid`, read before the fork) is already gone, that signal comes at once."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)


def dies_with_this_process(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.Popen`: the child dies with the caller."""
    parent = os.getpid()
    return lambda: die_with_parent(signum, parent)
