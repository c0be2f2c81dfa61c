"""The /v1 API: thin views that validate, commit, then send a wake-up (ids only). Each
view is declared with its OpenAPI operation (`web.operations`); each answer is built from
a response model (`web.response_models`)."""
from __future__ import annotations

from pathlib import Path

from flask import Response, request
from sqlalchemy.exc import IntegrityError

from shared import ledger, webhooks
from shared.errors import Conflict
from shared.notices import notices_for
from shared.orm import Job
from web import idempotency, metrics, queries
from web.auth import current_principal, require_api_key
from web.bodies import json_body
from web.context import db, genq
from web.downloads import output_response, wants_redirect
from web.errors import Forbidden
from web.operations import RETRY_AFTER, DocumentedBlueprint, Param, Reply
from web.request_models import ItemPageQuery, JobListQuery, JobRequest, validate_job_request, validate_query
from web.response_models import (
    ErrorResponse,
    ItemPageResponse,
    ItemResponse,
    JobAcceptedResponse,
    JobListResponse,
    JobResponse,
    JobStatusResponse,
    ModelListResponse,
)

MAX_ITEM_INDEX = 2**31 - 1  # the column is an INTEGER: a larger index is a 404, never an overflow

api = DocumentedBlueprint("api", __name__, url_prefix="/v1", secured=True)
api.before_request(require_api_key)

JOB_ID = Param("job_id", "path", {"type": "string"}, "The job's id, as POST /v1/jobs returned it.")
ITEM_INDEX = Param("index", "path", {"type": "integer", "minimum": 0}, "The item's index in the job (0-based).")
REDIRECT = Param("redirect", "query", {"type": "string", "enum": ["0", "1", "true", "false"]},
                 "`1` or `true`: answer with a 302 to a presigned URL of the object where the storage can sign one (S3).")
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1},
              "Page size: 1 to GENQ_MAX_PAGE_SIZE (default 1000); GENQ_DEFAULT_PAGE_SIZE (default 100) when left out.")
IDEMPOTENCY_KEY = Param(
    idempotency.HEADER, "header",
    {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH, "pattern": idempotency.KEY_PATTERN},
    "Makes the submit idempotent: the same key with the same body returns the first job; with another body, 409.")
BAD_REQUEST = Reply("The request is invalid (`invalid_request`, `unknown_model`, `limit_exceeded`); "
                    "`field` names what is wrong.", ErrorResponse)
NO_JOB = Reply("No such job (`not_found`).", ErrorResponse)
THE_JOB = Reply("The job.", JobResponse)
JOB_LINKS = {  # from a response that names a job to what can be done with it (clients and schemathesis follow them)
    name: {"operationId": operation_id, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation_id in (("GetJob", "get_job"), ("ListItems", "list_items"), ("CancelJob", "cancel_job"),
                               ("RetryJob", "retry_job"))
}


@api.operation(
    "POST", "/jobs", "Submit a job", tag="jobs",
    description="Commits the job and all its items, then wakes a worker. Nothing is written for a refused "
    "request. With an `Idempotency-Key`, a repeated request returns the first job.",
    params=(IDEMPOTENCY_KEY,),
    request=JobRequest,
    request_examples={
        "prompts": {"model": "demo-text", "prompts": ["Return the sum of", "Open a file"], "params": {"seed": 1}},
        "inputs": {"model": "demo-image", "inputs": [{"prompt": "7", "seed": 42}], "priority": 7},
    },
    responses={
        202: Reply("Accepted: the job is stored and queued.", JobAcceptedResponse, links=JOB_LINKS, headers={
            "Location": {"description": "The job's URL.", "required": True, "schema": {"type": "string"}},
            "Idempotent-Replayed": {"description": "`true` when this is the first job of a repeated key.",
                                    "schema": {"type": "string", "enum": ["true"]}},
        }),
        400: BAD_REQUEST,
        403: Reply("The `webhook.url` is one this deployment will not call: an internal address (unless "
                   "GENQ_WEBHOOK_ALLOW_PRIVATE) or a host off GENQ_WEBHOOK_ALLOWED_HOSTS (`forbidden`).", ErrorResponse),
        409: Reply("The Idempotency-Key was already used with another body, or the request names a `webhook` "
                   "and the tenant has no webhook signing secret yet (`conflict`).", ErrorResponse),
        413: Reply("The body is larger than GENQ_MAX_BODY_BYTES (`request_entity_too_large`).", ErrorResponse),
        429: Reply("Too many requests for this API key (`too_many_requests`), or the tenant's pending items "
                   "would pass GENQ_MAX_PENDING_ITEMS_PER_TENANT (`quota_exceeded`).", ErrorResponse,
                   headers={"Retry-After": RETRY_AFTER}),
    },
)
def create_job():
    ctx = genq()
    body = json_body(request)
    key = idempotency.key_from(request.headers)
    fingerprint = idempotency.fingerprint(body)
    session, tenant = db(), current_principal().tenant
    if key is not None:
        replay = idempotency.replay(session, tenant, key, fingerprint)
        if replay is not None:
            return _accepted(replay, replayed=True)
    job_request = validate_job_request(body, ctx.registry, ctx.settings)
    ctx.token_limits.check(job_request)
    check_pending_quota(session, tenant, len(job_request.inputs))
    webhook = check_webhook(session, tenant, job_request.webhook, ctx.settings)
    try:
        job = ledger.submit_job(
            session,
            tenant=tenant,
            model=job_request.spec.name,
            task=job_request.spec.task.value,
            params=job_request.params,
            inputs=job_request.inputs,
            priority=job_request.priority,
            idempotency_key=key,
            request_hash=fingerprint if key is not None else None,
            webhook=webhook,
        )
        session.commit()
    except IntegrityError:  # the same key, committed by a concurrent request (PostgreSQL: at the INSERT)
        session.rollback()
        replay = idempotency.replay(session, tenant, key, fingerprint) if key is not None else None
        if replay is None:
            raise
        return _accepted(replay, replayed=True)
    # One round trip to Redis: the wake-up's mark and the submit's counters for /metrics.
    tallies = metrics.watch().tallies
    ctx.wakeups.send(job.model, also=lambda pipe: tallies.job_submitted(job.model, job.total_items, pipe))
    return _accepted(job)


def check_webhook(session, tenant: str, requested, settings) -> dict | None:
    """A job's webhook: a URL genq will call, and a secret to sign with (shared.webhooks).
    The URL's syntax was checked with the body (`web.webhook_urls`); what is refused here
    is a well-formed request the deployment will not serve, so not a 400: a destination
    its policy forbids (403), a tenant without a secret until an operator makes one (409)."""
    if requested is None:
        return None
    try:
        webhooks.check_url(requested.url, settings)
    except webhooks.WebhookRefused as exc:
        raise Forbidden(exc.message, field=exc.field) from None
    if webhooks.signing_secret(session, tenant, settings) is None:
        raise Conflict(f"tenant {tenant!r} has no webhook signing secret: an operator runs "
                       "`genq webhooks set --tenant <tenant>` (or sets GENQ_WEBHOOK_SECRET)", field="webhook")
    return webhooks.job_webhook(requested.url, requested.events)


def check_pending_quota(session, tenant: str, new_items: int) -> None:
    genq().quota.admit(tenant, new_items, lambda: queries.pending_items_of_tenant(session, tenant))


def _accepted(job: Job | ledger.Submitted, replayed: bool = False):
    body = JobAcceptedResponse.of(job)
    headers = {"Location": body.links.self}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return body.reply(202, headers)


@api.operation(
    "GET", "/jobs", "List jobs", tag="jobs", description="Newest first, a page at a time.",
    params=(
        Param("state", "query", {"$ref": "#/components/schemas/JobState"}, "Only jobs in this state."),
        LIMIT,
        Param("cursor", "query", {"type": "string", "pattern": queries.CURSOR.pattern.replace("\\Z", "$")},
              "`next_cursor` of the previous page: a position in the list, `<microseconds since the epoch>-<job id>`."),
    ),
    responses={200: Reply("A page of jobs.", JobListResponse), 400: BAD_REQUEST},
)
def list_jobs():
    query = validate_query(JobListQuery, request.args, genq().settings)
    session = db()
    page, next_cursor = queries.list_jobs(session, current_principal(), query.state, query.limit, query.cursor)
    return JobListResponse(jobs=[JobResponse.of(job, counts) for job, counts in page], next_cursor=next_cursor).reply()


@api.operation(
    "GET", "/jobs/<job_id>", "Get a job", tag="jobs",
    description="State, counts of items by state, progress, timestamps, error and effective parameters; for a "
    "queued job its place in its model's queue, for an open one an ETA, and the progress inside the model of its "
    "running items.",
    params=(JOB_ID,), responses={200: Reply("The job, with its place in the queue, its ETA and the progress of its "
                                            "running items.", JobStatusResponse), 404: NO_JOB},
)
def get_job(job_id: str):
    session = db()
    job, counts = queries.find_job_with_counts(session, current_principal(), job_id)
    ctx = genq()
    outlook = queries.job_outlook(session, job, counts, ctx, metrics.watch())
    return JobStatusResponse.of_status(job, counts, outlook).reply()


def job_reply(session, job: Job, status: int = 200):
    return JobResponse.of(job, ledger.item_counts(session, [job.id])[job.id]).reply(status)


@api.operation(
    "GET", "/jobs/<job_id>/items", "List a job's items", tag="jobs",
    description="By index, a page at a time: prompt, seed, state, output and error of each.",
    params=(JOB_ID, Param("offset", "query", {"type": "integer", "minimum": 0, "maximum": 10**9},
                          "First index of the page."), LIMIT),
    responses={200: Reply("A page of items.", ItemPageResponse), 400: BAD_REQUEST, 404: NO_JOB},
)
def list_items(job_id: str):
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    page = validate_query(ItemPageQuery, request.args, genq().settings)
    items = queries.list_items(session, job, page.offset, page.limit)
    end = page.offset + page.limit
    return ItemPageResponse(items=[ItemResponse.of(item, job.params) for item in items], total=job.total_items,
                            next_offset=end if end < job.total_items else None).reply()


@api.operation(
    "GET", f"/jobs/<job_id>/items/<int(max={MAX_ITEM_INDEX}):index>/output", "Download an item's output", tag="jobs",
    description="The raw output: text for text models, a PNG for image models, streamed from storage. "
    "With `redirect=1` and S3 storage, a 302 to a presigned URL of the object instead (a directory "
    "has no URL of its own: the bytes are served).",
    params=(JOB_ID, ITEM_INDEX, REDIRECT),
    responses={
        200: Reply("The output.", media_types={
            "text/plain": {"type": "string"},
            "image/png": {"type": "string", "contentMediaType": "image/png"},
        }),
        302: Reply("`redirect=1` on S3 storage: the object's presigned URL (valid GENQ_S3_PRESIGN_SECONDS).", headers={
            "Location": {"description": "The presigned URL.", "required": True, "schema": {"type": "string"}},
        }),
        400: Reply("`redirect` is not 1 or 0 (`invalid_request`).", ErrorResponse),
        404: Reply("No such job or item, or its output is missing from storage (`not_found`).", ErrorResponse),
        409: Reply("The item has no output (yet, or it failed) (`conflict`).", ErrorResponse),
        503: Reply("Output storage cannot be reached now (`storage_unavailable`).", ErrorResponse,
                   headers={"Retry-After": RETRY_AFTER}),
    },
)
def get_item_output(job_id: str, index: int):
    redirect_to_storage = wants_redirect(request.args)
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    item = queries.find_item(session, job, index)
    if item.output_text is not None:
        return Response(item.output_text, mimetype="text/plain")
    if item.output_key is not None:
        ctx = genq()
        return output_response(ctx.storage, item.output_key, redirect_to_storage=redirect_to_storage,
                               presign_seconds=ctx.settings.s3_presign_seconds)
    raise Conflict(f"item {index} has no output (state {item.state.value})", field="index")


@api.operation(
    "POST", "/jobs/<job_id>/cancel", "Cancel a job", tag="jobs",
    description="Pending items are cancelled at once; running ones stop at the next micro-batch boundary, "
    "keeping finished items. Cancelling a cancelled job answers it again.",
    params=(JOB_ID,),
    responses={200: THE_JOB, 404: NO_JOB,
               409: Reply("The job already finished otherwise (`conflict`).", ErrorResponse)},
)
def cancel_job(job_id: str):
    session = db()
    job = ledger.cancel_job(session, queries.find_job(session, current_principal(), job_id))
    session.commit()
    notices_for(genq().settings.redis_url).publish([job.id])  # event streams re-read the ledger
    return job_reply(session, job)


@api.operation(
    "POST", "/jobs/<job_id>/retry", "Retry a job's failed items", tag="jobs",
    description="Puts a finished job's failed items back in the queue, with fresh attempts.",
    params=(JOB_ID,),
    responses={202: Reply("Accepted: the failed items are queued again.", JobResponse), 404: NO_JOB,
               409: Reply("The job is not finished, or has no failed items (`conflict`).", ErrorResponse)},
)
def retry_job(job_id: str):
    """Put a finished job's failed items back to pending, then wake a worker."""
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    ledger.retry_job(session, job)
    session.commit()
    notices_for(genq().settings.redis_url).publish([job.id])
    genq().wakeups.send(job.model)
    return job_reply(session, job, 202)


@api.operation(
    "GET", "/models", "List models", tag="models",
    description="Each model with its task, output type, defaults and limits (`models`); and, for the "
                "OpenAI SDK's `client.models.list()`, the same models in OpenAI's shape (`data`).",
    responses={200: Reply("The models.", ModelListResponse)},
)
def list_models():
    return ModelListResponse.of(genq().registry, Path(genq().settings.models_file)).reply()
