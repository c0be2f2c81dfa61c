"""OpenAI-compatible batches: POST/GET /v1/batches, GET /v1/batches/<id>, POST
/v1/batches/<id>/cancel.

Creating a batch validates its whole input file in the request (`web.openai_bodies`):
a bad file answers 200 with a batch whose status is `failed` and whose `errors.data`
names each bad line, as OpenAI does; a good one commits the batch with its genq jobs and
wakes the workers, like POST /v1/jobs. The reconciler writes the output and error files
once the jobs have finished (`shared.openai_batches`).
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from flask import request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from shared import openai_batches
from shared.errors import InvalidRequest
from shared.keys import Principal
from shared.openai_files import read_lines
from shared.openai_orm import FilePurpose, OpenAIBatch
from shared.openai_shapes import ENDPOINTS
from web import metrics
from web.api import check_pending_quota
from web.auth import current_principal
from web.bodies import json_body
from web.context import db, genq
from web.openai_bodies import plan_batch
from web.openai_common import (
    CURSOR_PARAMS,
    CursorQuery,
    Strict,
    cursor_page,
    error_reply,
    find_visible,
    openai_blueprint,
    page_ids,
    tenant_scope,
    timestamp,
)
from web.openai_files import EXPIRES_AFTER_SECONDS, find_file
from web.operations import Param, Reply
from web.request_models import _integral, pydantic_error, validate_query

batches = openai_blueprint("openai_batches", __name__)
BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}\Z")
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class OutputExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    anchor: Literal["created_at"]
    # bounds first: they reach the schema; 7200.0 is an integer to JSON Schema, so to us
    seconds: Annotated[int, Field(ge=EXPIRES_AFTER_SECONDS[0], le=EXPIRES_AFTER_SECONDS[1]), BeforeValidator(_integral)]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input_file_id: str = Field(max_length=64)
    endpoint: Literal[ENDPOINTS] = Field(description="What every line of the file calls (its `url`).")
    completion_window: Literal["24h"]
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None
    output_expires_after: OutputExpiresAfter | None = None


class BatchError(Strict):
    code: str | None
    line: int | None
    message: str | None
    param: str | None


class BatchErrors(Strict):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(Strict):
    total: int
    completed: int
    failed: int


class InputTokensDetails(Strict):
    cached_tokens: int = 0


class OutputTokensDetails(Strict):
    reasoning_tokens: int = 0


class BatchUsage(Strict):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class BatchObject(Strict):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    model: str | None
    usage: BatchUsage

    @classmethod
    def of(cls, batch: OpenAIBatch, counts: tuple[int, int]) -> BatchObject:
        errors = None
        if batch.errors:
            errors = BatchErrors(data=[BatchError(**entry) for entry in batch.errors.get("data", [])])
        times = {name: timestamp(getattr(batch, name)) for name in (
            "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
            "cancelling_at", "cancelled_at")}
        return cls(
            id=batch.id, endpoint=batch.endpoint, errors=errors, input_file_id=batch.input_file_id,
            completion_window=batch.completion_window, status=batch.status, output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id, created_at=timestamp(batch.created_at), **times,
            request_counts=RequestCounts(total=batch.total_requests, completed=counts[0], failed=counts[1]),
            metadata=batch.batch_metadata, model=batch.model,
            usage=BatchUsage(input_tokens=batch.input_tokens, output_tokens=batch.output_tokens,
                             total_tokens=batch.input_tokens + batch.output_tokens),
        )


class BatchList(Strict):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


def find_batch(session, principal: Principal, batch_id: str) -> OpenAIBatch:
    return find_visible(session, OpenAIBatch, tenant_scope(OpenAIBatch, principal), BATCH_ID, batch_id, "batch")


def batch_reply(session, batch: OpenAIBatch):
    return BatchObject.of(batch, openai_batches.request_counts(session, [batch])[batch.id]).reply()


BATCH_ID_PARAM = Param("batch_id", "path", {"type": "string"}, "The batch's id (`batch_...`).")
BATCH_LINKS = {name: {"operationId": operation_id, "parameters": {"batch_id": "$response.body#/id"}}
               for name, operation_id in (("GetBatch", "get_batch"), ("CancelBatch", "cancel_batch"))}
NO_BATCH = error_reply("No such batch of this tenant (`not_found`).")


@batches.operation("POST", "/batches", "Create a batch from an uploaded file", tag="batches", request=BatchCreate,
                   description="The whole input file is checked first: a bad line fails the batch (status `failed`, "
                   "`errors.data` names each bad line); a good file becomes genq jobs, queued at once.",
                   responses={200: Reply("The batch.", BatchObject, links=BATCH_LINKS),
                              400: error_reply("A field is wrong, or the file "
                              "is not a batch input file."), 404: error_reply("No such input file (`not_found`)."),
                              429: error_reply("The tenant's pending items would pass its quota, or too many "
                                               "requests (`too_many_requests`).")})
def create_batch():
    ctx, session, principal = genq(), db(), current_principal()
    try:
        body = BatchCreate.model_validate(json_body(request))
    except ValidationError as exc:
        raise pydantic_error(exc) from None
    source = find_file(session, principal, body.input_file_id)
    if source.purpose != FilePurpose.BATCH.value:
        raise InvalidRequest(f"file {source.id} has purpose {source.purpose!r}; a batch reads a file uploaded "
                             "with purpose 'batch'", field="input_file_id")
    batch = openai_batches.new_batch(
        principal.tenant, body.endpoint, source.id, body.completion_window, body.metadata,
        body.output_expires_after.seconds if body.output_expires_after else None)
    plan = plan_batch(read_lines(ctx.storage, source), body.endpoint, ctx.registry, ctx.settings, ctx.token_limits)
    jobs = []
    if plan.errors:
        openai_batches.fail_batch(batch, plan.errors, plan.requests)
        session.add(batch)
    else:
        check_pending_quota(session, principal.tenant, plan.items)
        jobs = openai_batches.start_batch(session, batch, plan.jobs, ctx.settings.max_items_per_job)
    session.commit()
    tallies = metrics.watch().tallies
    for model in sorted({job.model for job in jobs}):  # the jobs' counters ride on the wake-up's round trip
        items = [job.total_items for job in jobs if job.model == model]
        ctx.wakeups.send(model, also=lambda pipe, model=model, items=items: count_jobs(tallies, model, items, pipe))
    return batch_reply(session, batch)


def count_jobs(tallies, model: str, items: list[int], pipe) -> None:
    """Count a batch's jobs of `model` as submitted (each with its items), on `pipe`."""
    for total in items:
        tallies.job_submitted(model, total, pipe)


@batches.operation("GET", "/batches", "List batches, newest first", tag="batches", params=CURSOR_PARAMS,
                   responses={200: Reply("A page of batches.", BatchList), 400: error_reply("A parameter is wrong."),
                              404: error_reply("`after` names no batch of this tenant.")})
def list_batches():
    session = db()
    query = validate_query(CursorQuery, request.args, genq().settings)
    rows, has_more = cursor_page(session, OpenAIBatch, tenant_scope(OpenAIBatch, current_principal()), query)
    counts = openai_batches.request_counts(session, rows)
    return BatchList(data=[BatchObject.of(row, counts[row.id]) for row in rows], **page_ids(rows, has_more)).reply()


@batches.operation("GET", "/batches/<batch_id>", "Read a batch", tag="batches", params=(BATCH_ID_PARAM,),
                   responses={200: Reply("The batch.", BatchObject), 404: NO_BATCH})
def get_batch(batch_id: str):
    session = db()
    return batch_reply(session, find_batch(session, current_principal(), batch_id))


@batches.operation("POST", "/batches/<batch_id>/cancel", "Cancel a batch", tag="batches", params=(BATCH_ID_PARAM,),
                   description="Its unfinished jobs are cancelled; what finished is kept for the output file.",
                   responses={200: Reply("The batch, `cancelling` (then `cancelled`).", BatchObject),
                              400: error_reply("The batch is not in progress (`batch_not_cancellable`)."),
                              404: NO_BATCH})
def cancel_batch(batch_id: str):
    session = db()
    batch = openai_batches.cancel_batch(session, find_batch(session, current_principal(), batch_id))
    session.commit()
    return batch_reply(session, batch)
