"""gunicorn settings that `genq web` passes with `--config python:web.gunicorn_config`."""
from __future__ import annotations

from shared.processes import die_with_parent


def post_fork(server, worker) -> None:
    """A web worker dies with its master, even when the master is killed outright."""
    die_with_parent(parent_pid=server.pid)
