"""A whole genq stack for a module of integration tests: web server and one worker
process over a real Redis and a fresh schema on SQLite or PostgreSQL."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from genq.devstack import Stack
from tests.helpers.database import database_url_for, reset_schema


@contextmanager
def running_stack(backend: str, root: Path, redis_server, models_file: Path, **settings) -> Iterator[Stack]:
    """A migrated stack on `backend` (see `BACKENDS`) with its web server and one worker
    started, on an empty schema and Redis database; stopped and its schema dropped after."""
    url = database_url_for(backend, root)
    reset_schema(url)
    redis_server.client().flushdb()
    stack = Stack(root, url, redis_server.url, models_file, **settings)
    stack.migrate()
    stack.start_web()
    stack.start_worker()
    try:
        yield stack
    finally:
        stack.stop()
        reset_schema(url)
