"""The route table the OpenAPI document is built from: one `Route` per operation, naming
its Flask endpoint (so a test can hold the table and the app's URL map to each other),
its parameters, request model and response models by status."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shared.api_schemas import Error, Health, ItemPage, Job, JobAccepted, JobList, ModelList, Readiness
from shared.schemas import ImageParams, JobRequest, TextParams, UnconditionalImageParams
from web.idempotency import HEADER as IDEMPOTENCY_HEADER
from web.idempotency import KEY_PATTERN, MAX_KEY_LENGTH
from web.queries import CURSOR

SECURITY_SCHEME = "bearerAuth"
PARAMS_MODELS: tuple[type[BaseModel], ...] = (TextParams, ImageParams, UnconditionalImageParams)


@dataclass(frozen=True)
class Param:
    name: str
    location: str  # "query", "path" or "header"
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """One response: a JSON model, or raw media types with their schemas."""

    description: str
    model: type[BaseModel] | None = None
    media_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    endpoint: str  # the Flask endpoint, "blueprint.view"
    summary: str
    tag: str
    responses: dict[int, Reply]
    description: str = ""
    params: tuple[Param, ...] = ()
    request: type[BaseModel] | None = None
    request_examples: dict[str, Any] = field(default_factory=dict)
    secured: bool = True


JOB_ID = Param("job_id", "path", {"type": "string"}, "The job's id, as POST /v1/jobs returned it.")
ITEM_INDEX = Param("index", "path", {"type": "integer", "minimum": 0}, "The item's index in the job (0-based).")
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1},
              "Page size: 1 to GENQ_MAX_PAGE_SIZE (default 1000); GENQ_DEFAULT_PAGE_SIZE (default 100) when left out.")

BAD_REQUEST = Reply("The request is invalid (`invalid_request`, `unknown_model`, `limit_exceeded`); "
                    "`field` names what is wrong.", Error)
UNAUTHORIZED = Reply("No API key, or an unknown or revoked one (`unauthorized`).", Error, headers={
    "WWW-Authenticate": {"description": "`Bearer realm=\"genq\"`.", "schema": {"type": "string"}},
})
RETRY_AFTER = {"description": "Seconds to wait before trying again.", "required": True, "schema": {"type": "string"}}
TOO_MANY = Reply("Too many requests for this API key (GENQ_RATE_LIMIT) (`too_many_requests`).", Error,
                 headers={"Retry-After": RETRY_AFTER})
NO_JOB = Reply("No such job (`not_found`).", Error)
ANY_JOB = Reply("The job.", Job)


def _links_from_job_id(source: str) -> dict[str, dict[str, Any]]:
    """OpenAPI links from a response that names a job to what can be done with it (a
    client, or schemathesis' stateful phase, follows them)."""
    job = {"job_id": source}
    return {
        "GetJob": {"operationId": "get_job", "parameters": job},
        "ListItems": {"operationId": "list_items", "parameters": job},
        "CancelJob": {"operationId": "cancel_job", "parameters": job},
        "RetryJob": {"operationId": "retry_job", "parameters": job},
    }


def _secured(responses: dict[int, Reply]) -> dict[int, Reply]:
    """Every /v1 operation needs a key and is rate limited."""
    return {401: UNAUTHORIZED, 429: TOO_MANY, **responses}


ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/v1/jobs", "api.create_job", "Submit a job", "jobs",
        description="Commits the job and all its items, then wakes a worker. Nothing is written for a refused "
        "request. With an `Idempotency-Key`, a repeated request returns the first job.",
        params=(Param(IDEMPOTENCY_HEADER, "header", {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
                      "Makes the submit idempotent: the same key with the same body returns the first job; "
                      "with another body, 409."),),
        request=JobRequest,
        request_examples={
            "prompts": {"model": "demo-text", "prompts": ["Return the sum of", "Open a file"], "params": {"seed": 1}},
            "inputs": {"model": "demo-image", "inputs": [{"prompt": "7", "seed": 42}], "priority": 7},
        },
        responses=_secured({
            202: Reply("Accepted: the job is stored and queued.", JobAccepted, links=_links_from_job_id("$response.body#/id"),
                       headers={
                "Location": {"description": "The job's URL.", "required": True, "schema": {"type": "string"}},
                "Idempotent-Replayed": {"description": "`true` when this is the first job of a repeated key.",
                                        "schema": {"type": "string", "enum": ["true"]}},
            }),
            400: BAD_REQUEST,
            409: Reply("The Idempotency-Key was already used with another body (`conflict`).", Error),
            413: Reply("The body is larger than GENQ_MAX_BODY_BYTES (`request_entity_too_large`).", Error),
            429: Reply("Too many requests for this API key (`too_many_requests`), or the tenant's pending items "
                       "would pass GENQ_MAX_PENDING_ITEMS_PER_TENANT (`quota_exceeded`).", Error,
                       headers={"Retry-After": RETRY_AFTER}),
        }),
    ),
    Route(
        "GET", "/v1/jobs", "api.list_jobs", "List jobs", "jobs",
        description="Newest first, a page at a time.",
        params=(
            Param("state", "query", {"$ref": "#/components/schemas/JobState"}, "Only jobs in this state."),
            LIMIT,
            Param("cursor", "query", {"type": "string", "pattern": CURSOR.pattern.replace("\\Z", "$")},
                  "`next_cursor` of the previous page: a position in the list, `<microseconds since the epoch>-<job id>`."),
        ),
        responses=_secured({200: Reply("A page of jobs.", JobList), 400: BAD_REQUEST}),
    ),
    Route(
        "GET", "/v1/jobs/{job_id}", "api.get_job", "Get a job", "jobs",
        description="State, counts of items by state, progress, timestamps, error and effective parameters.",
        params=(JOB_ID,),
        responses=_secured({200: ANY_JOB, 404: NO_JOB}),
    ),
    Route(
        "GET", "/v1/jobs/{job_id}/items", "api.list_items", "List a job's items", "jobs",
        description="By index, a page at a time: prompt, seed, state, output and error of each.",
        params=(
            JOB_ID,
            Param("offset", "query", {"type": "integer", "minimum": 0, "maximum": 10**9}, "First index of the page."),
            LIMIT,
        ),
        responses=_secured({200: Reply("A page of items.", ItemPage), 400: BAD_REQUEST, 404: NO_JOB}),
    ),
    Route(
        "GET", "/v1/jobs/{job_id}/items/{index}/output", "api.get_item_output", "Download an item's output", "jobs",
        description="The raw output: text for text models, a PNG for image models.",
        params=(JOB_ID, ITEM_INDEX),
        responses=_secured({
            200: Reply("The output.", media_types={
                "text/plain": {"type": "string"},
                "image/png": {"type": "string", "contentMediaType": "image/png"},
            }),
            404: Reply("No such job or item (`not_found`).", Error),
            409: Reply("The item has no output (yet, or it failed) (`conflict`).", Error),
        }),
    ),
    Route(
        "POST", "/v1/jobs/{job_id}/cancel", "api.cancel_job", "Cancel a job", "jobs",
        description="Pending items are cancelled at once; running ones stop at the next micro-batch boundary, "
        "keeping finished items. Cancelling a cancelled job answers it again.",
        params=(JOB_ID,),
        responses=_secured({
            200: ANY_JOB, 404: NO_JOB,
            409: Reply("The job already finished otherwise (`conflict`).", Error),
        }),
    ),
    Route(
        "POST", "/v1/jobs/{job_id}/retry", "api.retry_job", "Retry a job's failed items", "jobs",
        description="Puts a finished job's failed items back in the queue, with fresh attempts.",
        params=(JOB_ID,),
        responses=_secured({
            202: Reply("Accepted: the failed items are queued again.", Job), 404: NO_JOB,
            409: Reply("The job is not finished, or has no failed items (`conflict`).", Error),
        }),
    ),
    Route(
        "GET", "/v1/models", "api.list_models", "List models", "models",
        description="Each model with its task, output type, defaults and limits.",
        responses=_secured({200: Reply("The models.", ModelList)}),
    ),
    Route(
        "GET", "/healthz", "health.healthz", "Liveness", "health",
        responses={200: Reply("The process is up.", Health)}, secured=False,
    ),
    Route(
        "GET", "/readyz", "health.readyz", "Readiness", "health",
        description="Whether the database and Redis answer.",
        responses={200: Reply("Ready.", Readiness), 503: Reply("Not ready: a check failed.", Readiness)},
        secured=False,
    ),
)
