"""GET /v1/workers: which workers answer now, and the models whose queues each consumes.

Asked of the workers themselves through Celery's remote control (a broadcast over the
broker; each worker's main process answers, even while its pool runs a slice), so a
model with no answering worker is one nobody serves now. The question waits
GENQ_WORKER_INSPECT_SECONDS for answers, so a web process asks at most once per
FRESH_SECONDS: requests meanwhile (every open models page polls) take the last answer, and
those that arrive during a question wait for its answer instead of asking again. The view
is added to the /v1 blueprint.
"""
from __future__ import annotations

import threading
import time

from flask import current_app
from pydantic import Field

from shared.queue import QUEUE_PREFIX
from web.api import api
from web.context import genq
from web.operations import Reply
from web.response_models import _Response

FRESH_SECONDS = 2.0


class WorkerInfo(_Response):
    name: str = Field(description="The worker's Celery node name, e.g. `gpu0@host`.", examples=["cpu@host"])
    models: list[str] = Field(description="The models whose queues it consumes.")


class WorkerListResponse(_Response):
    workers: list[WorkerInfo] = Field(description="Every worker that answered, by name.")


@api.operation(
    "GET", "/workers", "List the workers answering now", tag="models",
    description="Each worker that answers within GENQ_WORKER_INSPECT_SECONDS, with the models it serves. "
    "No worker for a model: its jobs wait.",
    responses={200: Reply("The workers.", WorkerListResponse)},
)
def list_workers():
    ctx = genq()
    answers = current_app.extensions.setdefault("genq_worker_answers", LastAnswer())
    return WorkerListResponse(workers=answers.get(lambda: answering_workers(
        ctx.celery, ctx.settings.worker_inspect_seconds))).reply()


class LastAnswer:
    """The workers' last answer, asked again once it is FRESH_SECONDS old."""

    def __init__(self):
        self._lock = threading.Lock()
        self._asked_at = float("-inf")
        self._workers: list[WorkerInfo] = []

    def get(self, ask) -> list[WorkerInfo]:
        with self._lock:  # one question at a time; who waited takes its answer
            if time.monotonic() - self._asked_at >= FRESH_SECONDS:
                self._workers = ask()
                self._asked_at = time.monotonic()
            return self._workers


def answering_workers(celery, timeout: float) -> list[WorkerInfo]:
    try:
        replies = celery.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # the broker is down: no worker can be reached either
        replies = {}
    return [WorkerInfo(name=name, models=sorted(queue["name"].removeprefix(QUEUE_PREFIX) for queue in queues
                                                if queue["name"].startswith(QUEUE_PREFIX)))
            for name, queues in sorted(replies.items())]
