"""What the API answers, as pydantic models: each response is built from one of these and
dumped to JSON, so the document (`web.openapi`) and the wire cannot disagree.

A `...Response` is a whole body; the others are parts of one. Every field is required
(nullable ones too) and no other field is allowed: `tests/web/test_openapi.py` validates
real responses against the models and against the document.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from flask import jsonify, url_for
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_serializer

from shared.items import sample_position
from shared.ledger import Counts
from shared.model_files import weights_of
from shared.orm import ItemState, Job, JobItem, JobState
from shared.registry import ModelSpec, Task
from shared.retention import expires_at
from web.context import genq

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
        job = url_for("api.get_job", job_id=job_id)  # one lookup: the others are paths under it
        return cls(self=job, items=f"{job}/items", cancel=f"{job}/cancel")


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
    expires_at: Timestamp = Field(
        description="When the job, its items and outputs are removed: GENQ_RESULT_TTL (or the tenant's own) after it "
        "finished. Null while it is open, or when finished jobs are kept for ever.")
    error: str | None = Field(description="Why the job failed (for example how many items failed).")
    params: dict[str, Any] = Field(
        description="The effective parameters: the model's registry defaults overridden by the request "
        "(one of TextParams, ImageParams, UnconditionalImageParams, GeneratorImageParams, by the model's task)."
    )
    links: JobLinks

    @classmethod
    def of(cls, job: Job, counts: Counts) -> JobResponse:
        return cls(
            id=job.id, model=job.model, task=Task(job.task), state=job.state, priority=job.priority,
            counts=ItemCounts(**counts.as_dict()), progress=round(counts.progress, 6),
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            expires_at=expires_at(genq().settings, job), error=job.error, params=job.params, links=JobLinks.of(job.id),
        )


class JobListResponse(_Response):
    jobs: list[JobResponse] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class QueuePlace(_Response):
    """Where a queued job stands in its model's claim order (tenants take turns, one slice
    each; within a tenant priority, then age). An estimate: a job with a higher priority,
    or of a tenant whose turn comes first, may still go ahead of it."""

    position: int = Field(ge=1, description="1: the next job of the model to start.")
    items_ahead: int = Field(ge=0, description="Pending items of other jobs that start before this job's first.")
    exact: bool = Field(description="False when more jobs wait ahead than GENQ_QUEUE_SCAN_JOBS: then both figures "
                        "are lower bounds.")


class StepProgress(_Response):
    step: int = Field(ge=0, description="Denoising steps done.")
    steps: int | None = Field(ge=1, description="Denoising steps in all (null when the pipeline's default is used).")


class TokenProgress(_Response):
    tokens: int = Field(ge=0, description="Tokens generated so far.")


class RunningItem(_Response):
    index: int = Field(ge=0)
    progress: StepProgress | TokenProgress = Field(
        description="Inside the model: steps for images, tokens for text. Written by the worker at most every "
        "GENQ_PROGRESS_INTERVAL_SECONDS.")
    updated_at: AwareDatetime


EtaReason = Literal["not_measured", "no_live_worker", "lower_bound", "worker_lost", "not_open", "unavailable"]


class JobStatusResponse(JobResponse):
    """A job as GET /v1/jobs/<id> answers it: with its place in the queue, its ETA and the
    progress of its running items."""

    queue: QueuePlace | None = Field(description="For a queued job; null otherwise.")
    eta_seconds: float | None = Field(
        ge=0, description="Seconds until the job's last item is expected to finish: the items that run before it "
        "over the model's measured throughput (items per second of a busy worker, over the last "
        "GENQ_THROUGHPUT_WINDOW_SECONDS, times the live workers serving the model). Null with `eta_reason` when "
        "there is no estimate.")
    eta_reason: EtaReason | None = Field(
        description="Why `eta_seconds` is null or only a lower bound: `not_measured` (no item of the model finished "
        "in the window), `no_live_worker` (no worker served the model lately, and none holds an item of the job), `lower_bound` (more jobs wait ahead "
        "than were counted), `worker_lost` (some of the job's items are held by a worker that stopped renewing its "
        "lease: they run again once it expires, GENQ_LEASE_SECONDS after its last renewal; `eta_seconds` counts "
        "that wait, and one worker at the measured rate if none served the model lately), `not_open` (the job is "
        "not queued or running), `unavailable` (Redis did not answer). Null when `eta_seconds` is an estimate.")
    running_items: list[RunningItem] = Field(description="Progress inside the model of the items running now.")

    @classmethod
    def of_status(cls, job: Job, counts: Counts, status) -> JobStatusResponse:
        """`status` is a `web.queries.JobOutlook`."""
        place = status.place
        return cls(
            **dict(JobResponse.of(job, counts)),
            queue=None if place is None else QueuePlace(position=place.position, items_ahead=place.items_ahead,
                                                        exact=status.exact),
            eta_seconds=None if status.eta_seconds is None else round(status.eta_seconds, 3),
            eta_reason=status.eta_reason,
            running_items=[RunningItem(
                index=item.index,
                progress=TokenProgress(tokens=item.tokens) if item.tokens is not None
                else StepProgress(step=item.step or 0, steps=item.steps),
                updated_at=datetime.fromtimestamp(item.updated_at, timezone.utc),
            ) for item in status.running],
        )


class TextOutput(_Response):
    text: str


class ImageOutput(_Response):
    image_url: str = Field(description="Where the PNG is served.")


class ItemResponse(_Response):
    index: int = Field(ge=0)
    prompt_index: int = Field(ge=0, description="Which prompt of the request the item is of (0-based).")
    sample: int = Field(ge=0, description="Which of that prompt's `n` samples (or latent-walk steps) it is.")
    state: ItemState
    prompt: str
    seed: int = Field(ge=0, description="The seed the item runs with (always stored, so it can be reproduced).")
    output: TextOutput | ImageOutput | None
    error: str | None
    attempts: int = Field(ge=0)
    started_at: Timestamp
    finished_at: Timestamp

    @classmethod
    def of(cls, item: JobItem, params: dict[str, Any] | None = None) -> ItemResponse:
        """`params` are the job's: where the item stands follows from them and its index."""
        prompt_index, sample = sample_position(item.index, params)
        return cls(index=item.index, prompt_index=prompt_index, sample=sample, state=item.state, prompt=item.prompt,
                   seed=item.seed, output=item_output(item),
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
    available: bool = Field(description="Whether this deployment has the model's weights. A job for a model "
                            "without them is refused (`model_unavailable`) until an operator installs them.")
    unavailable_reason: str | None = Field(description="Why the model is not available; null when it is.")

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelInfo:
        weights = weights_of(spec)
        return cls(name=spec.name, task=spec.task, output="image/png" if spec.task.is_image else "text/plain",
                   micro_batch_size=spec.micro_batch_size, defaults=spec.defaults,
                   limits={name: Bounds(min=b.min, max=b.max) for name, b in spec.limits.items()},
                   available=weights.available, unavailable_reason=weights.reason)


class OpenAIModel(_Response):
    """A model as OpenAI's `GET /v1/models` lists it, so that its SDK's
    `client.models.list()` sees the models its batches may name."""

    id: str = Field(description="The model's name.")
    object: Literal["model"] = "model"
    created: int = Field(description="When its weights were installed here (their directory's modification time, "
                         "Unix seconds); for a model without them, when the model registry was last changed.")
    owned_by: str = Field(description="Always `genq`: the deployment that serves it.")

    @classmethod
    def of(cls, spec: ModelSpec, registry_file: Path) -> OpenAIModel:
        weights = Path(weights_of(spec).where or registry_file)
        return cls(id=spec.name, created=int((weights if weights.exists() else registry_file).stat().st_mtime),
                   owned_by="genq")


class ModelListResponse(_Response):
    models: list[ModelInfo]
    object: Literal["list"] = Field("list", description="`object` and `data`: the same models in OpenAI's shape.")
    data: list[OpenAIModel]

    @classmethod
    def of(cls, specs, registry_file: Path) -> ModelListResponse:
        specs = list(specs)
        return cls(models=[ModelInfo.of(spec) for spec in specs],
                   data=[OpenAIModel.of(spec, registry_file) for spec in specs])


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
        description="A stable machine-readable code: unknown_model, model_unavailable, invalid_request, "
        "limit_exceeded, not_found, conflict, unauthorized, request_entity_too_large, ...",
        examples=["invalid_request"],
    )
    message: str = Field(description="For people.")
    field: str | None = Field(description="The field or parameter at fault, as a dotted path, if any.")


class ErrorResponse(_Response):
    error: ErrorBody

    @classmethod
    def of(cls, code: str, message: str, field: str | None = None) -> ErrorResponse:
        return cls(error=ErrorBody(code=code, message=message, field=field))


class ProgressEvent(_Response):
    """The data of an event stream's `progress` event, and of a job's final `completed`,
    `failed` or `cancelled`: the job's progress as GET /v1/jobs/<id> gives it."""

    job_id: str
    state: JobState
    counts: ItemCounts
    progress: float = Field(ge=0, le=1)
    queue: QueuePlace | None = None
    eta_seconds: float | None = Field(None, ge=0)
    eta_reason: EtaReason | None = None
    started_at: Timestamp
    finished_at: Timestamp


class ItemEvent(_Response):
    """The data of an `item` event: an item of the job finished."""

    job_id: str
    index: int = Field(ge=0)
    state: Literal["succeeded", "failed", "cancelled"]
    output_url: str | None = Field(description="Where its output downloads from (null when it has none).")
    error: str | None
    finished_at: AwareDatetime


EVENT_MODELS = (ProgressEvent, ItemEvent)


def _sse_event(names: list[str], model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "object", "required": ["event", "data", "id"], "properties": {
        "event": {"enum": names},
        "id": {"type": "string", "description": "Send it back as Last-Event-ID to resume after this event."},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": f"#/components/schemas/{model.__name__}"}},
        "retry": {"type": "integer", "minimum": 0},
    }}


# Each event of a stream (OpenAPI 3.1 describes a text/event-stream by one event); comment
# lines (keep-alives) and the opening `retry:` are not events.
EVENT_STREAM_SCHEMA = {"oneOf": [_sse_event(["progress", "completed", "failed", "cancelled"], ProgressEvent),
                                 _sse_event(["item"], ItemEvent)]}
