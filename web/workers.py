"""GET /v1/workers: which workers answer now, and the models whose queues each consumes.

Asked of the workers themselves through Celery's remote control (a broadcast over the
broker; each worker's main process answers, even while its pool runs a slice), so a
model with no answering worker is one nobody serves now. The question waits
GENQ_WORKER_INSPECT_SECONDS for answers. The view is added to the /v1 blueprint.
"""
from __future__ import annotations

from pydantic import Field

from shared.queue import QUEUE_PREFIX
from web.api import api
from web.context import genq
from web.operations import Reply
from web.response_models import _Response


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
    return WorkerListResponse(workers=answering_workers(ctx.celery, ctx.settings.worker_inspect_seconds)).reply()


def answering_workers(celery, timeout: float) -> list[WorkerInfo]:
    try:
        replies = celery.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # the broker is down: no worker can be reached either
        replies = {}
    return [WorkerInfo(name=name, models=sorted(queue["name"].removeprefix(QUEUE_PREFIX) for queue in queues
                                                if queue["name"].startswith(QUEUE_PREFIX)))
            for name, queues in sorted(replies.items())]
