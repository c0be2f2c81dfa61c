"""Response schemas: what the API answers, as pydantic models.

They describe the JSON that `web.serializers` and the views build; they are not used to
build it. `tests/web/test_openapi.py` validates real responses against them (every field
required, no extra field allowed), so a change on either side that is not made on the
other fails a test. `web.openapi` turns them into the OpenAPI document.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.orm import ItemState, JobState
from shared.registry import Task

Timestamp = AwareDatetime | None


class _Response(BaseModel):
    """Every field is required (nullable ones too) and no other field is allowed."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Links(_Response):
    self: str = Field(description="This job.", examples=["/v1/jobs/4f1c2a9e8b7d4c3e9a0b1c2d3e4f5a6b"])
    items: str = Field(description="The job's items, page by page.")
    cancel: str = Field(description="POST here to cancel the job.")


class JobAccepted(_Response):
    id: str = Field(description="The job's id.", examples=["4f1c2a9e8b7d4c3e9a0b1c2d3e4f5a6b"])
    state: JobState
    links: Links


class Counts(_Response):
    """How many of the job's items are in each state."""

    total: int = Field(ge=0)
    pending: int = Field(ge=0)
    running: int = Field(ge=0)
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)
    cancelled: int = Field(ge=0)


class Job(_Response):
    id: str
    model: str
    task: Task
    state: JobState
    priority: int = Field(ge=0, le=9)
    counts: Counts
    progress: float = Field(ge=0, le=1, description="Finished items over all items.")
    created_at: AwareDatetime
    started_at: Timestamp
    finished_at: Timestamp
    error: str | None = Field(description="Why the job failed (for example how many items failed).")
    params: dict[str, Any] = Field(
        description="The effective parameters: the model's registry defaults overridden by the request "
        "(one of TextParams, ImageParams, UnconditionalImageParams, by the model's task)."
    )
    links: Links


class JobList(_Response):
    jobs: list[Job] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class TextOutput(_Response):
    text: str


class ImageOutput(_Response):
    image_url: str = Field(description="Where the PNG is served.")


class Item(_Response):
    index: int = Field(ge=0)
    state: ItemState
    prompt: str
    seed: int = Field(ge=0, description="The seed the item runs with (always stored, so it can be reproduced).")
    output: TextOutput | ImageOutput | None
    error: str | None
    attempts: int = Field(ge=0)
    started_at: Timestamp
    finished_at: Timestamp


class ItemPage(_Response):
    items: list[Item]
    total: int = Field(ge=0, description="How many items the job holds.")
    next_offset: int | None = Field(description="Pass as `offset` for the next page; null on the last page.")


class Bounds(_Response):
    """A registry limit; a missing bound is not limited."""

    min: float | None = None
    max: float | None = None


class ModelInfo(_Response):
    name: str
    task: Task
    output: Literal["text/plain", "image/png"] = Field(description="The media type of each item's output.")
    micro_batch_size: int = Field(ge=1)
    defaults: dict[str, Any] = Field(description="Parameters used when a request leaves them out.")
    limits: dict[str, Bounds] = Field(description="Bounds on parameters, beyond the parameter schema's own.")


class ModelList(_Response):
    models: list[ModelInfo]


class Health(_Response):
    status: Literal["ok"]


class ReadinessChecks(_Response):
    model_config = ConfigDict(extra="allow", strict=True)

    database: str = Field(description='"ok", or "error: <exception type>".')
    redis: str = Field(description='"ok", or "error: <exception type>" (or, under `genq up`, why its Redis is down).')
    __pydantic_extra__: dict[str, str] = Field(init=False)  # under `genq up`: one more per service


class Readiness(_Response):
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


class Error(_Response):
    error: ErrorBody
