"""What the API answers, as pydantic models: each response is built from one of these and
dumped to JSON, so the document (`web.openapi`) and the wire cannot disagree.

A `...Response` is a whole body; the others are parts of one. Every field is required
(nullable ones too) and no other field is allowed: `tests/web/test_openapi.py` validates
real responses against the models and against the document.
"""
from __future__ import annotations

from typing import Any, Literal

from flask import jsonify, url_for
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_serializer

from shared.ledger import Counts
from shared.orm import ItemState, Job, JobItem, JobState
from shared.registry import ModelSpec, Task

Timestamp = AwareDatetime | None


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    def reply(self, status: int = 200, headers: dict[str, str] | None = None):
        """This body as a Flask response."""
        response = jsonify(self.model_dump(mode="json"))
        response.status_code = status
        response.headers.update(headers or {})
        return response


class JobLinks(_Response):
    self: str = Field(description="This job.", examples=["/v1/jobs/4f1c2a9e8b7d4c3e9a0b1c2d3e4f5a6b"])
    items: str = Field(description="The job's items, page by page.")
    cancel: str = Field(description="POST here to cancel the job.")

    @classmethod
    def of(cls, job_id: str) -> JobLinks:
        return cls(self=url_for("api.get_job", job_id=job_id), items=url_for("api.list_items", job_id=job_id),
                   cancel=url_for("api.cancel_job", job_id=job_id))


class JobAcceptedResponse(_Response):
    id: str = Field(description="The job's id.", examples=["4f1c2a9e8b7d4c3e9a0b1c2d3e4f5a6b"])
    state: JobState
    links: JobLinks

    @classmethod
    def of(cls, job: Job) -> JobAcceptedResponse:
        return cls(id=job.id, state=job.state, links=JobLinks.of(job.id))


class ItemCounts(_Response):
    """How many of the job's items are in each state."""

    total: int = Field(ge=0)
    pending: int = Field(ge=0)
    running: int = Field(ge=0)
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)
    cancelled: int = Field(ge=0)


class JobResponse(_Response):
    id: str
    model: str
    task: Task
    state: JobState
    priority: int = Field(ge=0, le=9)
    counts: ItemCounts
    progress: float = Field(ge=0, le=1, description="Finished items over all items.")
    created_at: AwareDatetime
    started_at: Timestamp
    finished_at: Timestamp
    error: str | None = Field(description="Why the job failed (for example how many items failed).")
    params: dict[str, Any] = Field(
        description="The effective parameters: the model's registry defaults overridden by the request "
        "(one of TextParams, ImageParams, UnconditionalImageParams, by the model's task)."
    )
    links: JobLinks

    @classmethod
    def of(cls, job: Job, counts: Counts) -> JobResponse:
        return cls(
            id=job.id, model=job.model, task=Task(job.task), state=job.state, priority=job.priority,
            counts=ItemCounts(**counts.as_dict()), progress=round(counts.progress, 6),
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            error=job.error, params=job.params, links=JobLinks.of(job.id),
        )


class JobListResponse(_Response):
    jobs: list[JobResponse] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class TextOutput(_Response):
    text: str


class ImageOutput(_Response):
    image_url: str = Field(description="Where the PNG is served.")


class ItemResponse(_Response):
    index: int = Field(ge=0)
    state: ItemState
    prompt: str
    seed: int = Field(ge=0, description="The seed the item runs with (always stored, so it can be reproduced).")
    output: TextOutput | ImageOutput | None
    error: str | None
    attempts: int = Field(ge=0)
    started_at: Timestamp
    finished_at: Timestamp

    @classmethod
    def of(cls, item: JobItem) -> ItemResponse:
        return cls(index=item.index, state=item.state, prompt=item.prompt, seed=item.seed, output=item_output(item),
                   error=item.error, attempts=item.attempts, started_at=item.started_at,
                   finished_at=item.finished_at)


def item_output(item: JobItem) -> TextOutput | ImageOutput | None:
    if item.output_text is not None:
        return TextOutput(text=item.output_text)
    if item.output_key is not None:
        return ImageOutput(image_url=url_for("api.get_item_output", job_id=item.job_id, index=item.index))
    return None


class ItemPageResponse(_Response):
    items: list[ItemResponse]
    total: int = Field(ge=0, description="How many items the job holds.")
    next_offset: int | None = Field(description="Pass as `offset` for the next page; null on the last page.")


class Bounds(_Response):
    """A registry limit; a missing bound is not limited (and left out)."""

    min: float | None = None
    max: float | None = None

    @model_serializer(mode="wrap")
    def _without_missing_bounds(self, handler) -> dict[str, float]:
        return {name: value for name, value in handler(self).items() if value is not None}


class ModelInfo(_Response):
    name: str
    task: Task
    output: Literal["text/plain", "image/png"] = Field(description="The media type of each item's output.")
    micro_batch_size: int = Field(ge=1)
    defaults: dict[str, Any] = Field(description="Parameters used when a request leaves them out.")
    limits: dict[str, Bounds] = Field(description="Bounds on parameters, beyond the parameter schema's own.")

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelInfo:
        return cls(name=spec.name, task=spec.task, output="image/png" if spec.task.is_image else "text/plain",
                   micro_batch_size=spec.micro_batch_size, defaults=spec.defaults,
                   limits={name: Bounds(min=b.min, max=b.max) for name, b in spec.limits.items()})


class ModelListResponse(_Response):
    models: list[ModelInfo]


class HealthResponse(_Response):
    status: Literal["ok"]


class ReadinessChecks(_Response):
    model_config = ConfigDict(extra="allow", strict=True)

    database: str = Field(description='"ok", or "error: <exception type>".')
    redis: str = Field(description='"ok", or "error: <exception type>" (or, under `genq up`, why its Redis is down).')
    __pydantic_extra__: dict[str, str] = Field(init=False)  # under `genq up`: one more per service


class ReadinessResponse(_Response):
    status: Literal["ready", "not_ready"]
    checks: ReadinessChecks


class ErrorBody(_Response):
    code: str = Field(
        description="A stable machine-readable code: unknown_model, invalid_request, limit_exceeded, "
        "not_found, conflict, unauthorized, request_entity_too_large, ...",
        examples=["invalid_request"],
    )
    message: str = Field(description="For people.")
    field: str | None = Field(description="The field or parameter at fault, as a dotted path, if any.")


class ErrorResponse(_Response):
    error: ErrorBody

    @classmethod
    def of(cls, code: str, message: str, field: str | None = None) -> ErrorResponse:
        return cls(error=ErrorBody(code=code, message=message, field=field))
