"""Each operation declared once, beside its view: `DocumentedBlueprint.operation` registers
the Flask route and records what the OpenAPI document says of it (summary, parameters,
request and response models by status), so a route cannot exist undocumented or be
documented under another path.

Our own decorator rather than spectree, flask-openapi3 or apispec: those validate
requests their own way (genq's typed errors name the failing field by its dotted path
and are checked against the registry, which a static schema cannot express), and
`web.openapi` narrows the document per deployment (one branch per model), which they
do not; what remains is this small record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Blueprint
from pydantic import BaseModel

from web.response_models import ErrorResponse


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
class Operation:
    method: str
    path: str  # as OpenAPI writes it: /v1/jobs/{job_id}
    endpoint: str  # the Flask endpoint, "blueprint.view"
    summary: str
    tag: str
    responses: dict[int, Reply]
    description: str = ""
    params: tuple[Param, ...] = ()
    request: type[BaseModel] | None = None
    request_examples: dict[str, Any] = field(default_factory=dict)
    request_media_type: str = "application/json"  # or "multipart/form-data" (an upload)
    secured: bool = True

    @property
    def operation_id(self) -> str:
        return self.endpoint.split(".", 1)[1]


UNAUTHORIZED = Reply("No API key, or an unknown or revoked one (`unauthorized`).", ErrorResponse, headers={
    "WWW-Authenticate": {"description": "`Bearer realm=\"genq\"`.", "schema": {"type": "string"}},
})
RETRY_AFTER = {"description": "Seconds to wait before trying again.", "required": True, "schema": {"type": "string"}}
TOO_MANY = Reply("Too many requests for this API key (GENQ_RATE_LIMIT) (`too_many_requests`).", ErrorResponse,
                 headers={"Retry-After": RETRY_AFTER})


def openapi_path(rule: str) -> str:
    """`/v1/jobs/<job_id>/items/<int:index>` as OpenAPI writes it: `/v1/jobs/{job_id}/items/{index}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


class DocumentedBlueprint(Blueprint):
    """A blueprint whose routes are declared with `operation`. On a `secured` one every
    operation needs an API key and is rate limited, so each may answer 401 and 429."""

    unauthorized, too_many = UNAUTHORIZED, TOO_MANY  # in the blueprint's own error envelope

    def __init__(self, *args: Any, secured: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secured = secured
        self.operations: list[Operation] = []

    def operation(self, method: str, rule: str, summary: str, *, tag: str, responses: dict[int, Reply],
                  **described: Any) -> Callable:
        """Route `method rule` to the view below, documented as `summary` with `responses`
        (and optionally description, params, request, request_examples)."""
        if self.secured:
            responses = {401: self.unauthorized, 429: self.too_many, **responses}

        def register(view: Callable) -> Callable:
            self.add_url_rule(rule, view_func=view, methods=[method])
            self.operations.append(Operation(
                method, openapi_path((self.url_prefix or "") + rule), f"{self.name}.{view.__name__}", summary, tag,
                responses, secured=self.secured, **described))
            return view
        return register
