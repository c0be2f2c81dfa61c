"""What the OpenAI-compatible routes share: blueprints that need an API key like /v1/jobs,
OpenAI's error envelope, cursor pages and timestamps.

Errors on these routes are `{"error": {"message", "type", "param", "code"}}` (what the
`openai` package reads), from the same typed errors as the rest of the API. The SDK
retries 408, 409, 429 and 5xx: a refusal that a retry cannot change is a 400 or 404.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Callable

from flask import jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select

from shared.errors import NotFound
from shared.keys import Principal
from web.auth import require_api_key
from web.errors import register_error_handlers
from web.operations import TOO_MANY, UNAUTHORIZED, DocumentedBlueprint, Param, Reply
from web.request_models import _PageQuery

ERROR_TYPES = {401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, code: str, message: str, param: str | None = None, headers: dict | None = None):
    error_type = "server_error" if status >= 500 else ERROR_TYPES.get(status, "invalid_request_error")
    response = jsonify({"error": {"message": message, "type": error_type, "param": param, "code": code}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


class OpenAIErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    message: str
    type: str = Field(description="`invalid_request_error`, `rate_limit_error` or `server_error`.")
    param: str | None = Field(description="The parameter the error concerns (`body.max_tokens`, `file`), if one.")
    code: str | None = Field(description="genq's error code (`not_found`, `batch_not_cancellable`, ...).")


class OpenAIErrorResponse(BaseModel):
    """An error on the OpenAI-compatible routes, in OpenAI's envelope."""

    model_config = ConfigDict(extra="forbid", strict=True)
    error: OpenAIErrorBody


class OpenAIBlueprint(DocumentedBlueprint):
    """Documented like the rest of /v1, its 401 and 429 in OpenAI's envelope."""

    unauthorized = Reply("No API key, or an unknown or revoked one (`unauthorized`).", OpenAIErrorResponse,
                         headers=UNAUTHORIZED.headers)
    too_many = Reply("Too many requests for this API key (GENQ_RATE_LIMIT).", OpenAIErrorResponse,
                     headers=TOO_MANY.headers)


def openai_blueprint(name: str, import_name: str) -> OpenAIBlueprint:
    """A /v1 blueprint whose views need an API key and answer errors in OpenAI's envelope."""
    blueprint = OpenAIBlueprint(name, import_name, url_prefix="/v1", secured=True)
    blueprint.before_request(require_api_key)
    register_error_handlers(blueprint, render=openai_error)
    return blueprint


def error_reply(description: str) -> Reply:
    return Reply(description, OpenAIErrorResponse)


def timestamp(moment: datetime | None) -> int | None:
    """Seconds since the epoch, as OpenAI's objects give times."""
    return None if moment is None else int(moment.timestamp())


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    def reply(self, status: int = 200):
        response = jsonify(self.model_dump(mode="json"))
        response.status_code = status
        return response


class CursorQuery(_PageQuery):
    """`?after=<id>&limit=&order=`: the page after the object `after` names. The page
    size is checked as every listing's is (`_PageQuery`: GENQ_MAX_PAGE_SIZE)."""

    after: str | None = Field(None, max_length=64)
    order: str = Field("desc", pattern="^(asc|desc)$")


CURSOR_PARAMS = (
    Param("after", "query", {"type": "string", "maxLength": 64}, "The id of the last object of the previous page."),
    Param("limit", "query", {"type": "integer", "minimum": 1},
          "Page size: 1 to GENQ_MAX_PAGE_SIZE; GENQ_DEFAULT_PAGE_SIZE when left out."),
    Param("order", "query", {"type": "string", "enum": ["asc", "desc"]}, "By creation time (default `desc`)."),
)


def tenant_scope(table, principal: Principal, *conditions) -> Callable[[Any], Any]:
    """What of `table` the caller may see: its tenant's rows (an admin's: every tenant's)
    that meet `conditions`; the one place such rows are scoped."""
    def scope(statement):
        statement = statement.where(*conditions)
        return statement if principal.admin else statement.where(table.tenant == principal.tenant)
    return scope


def find_visible(session, table, visible: Callable[[Any], Any], id_pattern: re.Pattern, object_id: str,
                 noun: str):
    """The row `object_id` names if `visible` allows it; another tenant's is a 404,
    exactly like one that never existed (field `<noun>_id`)."""
    found = None
    if id_pattern.match(object_id):
        found = session.scalars(visible(select(table)).where(table.id == object_id)).first()
    if found is None:
        raise NotFound(f"no {noun} {object_id!r}", field=f"{noun}_id")
    return found


def page_ids(rows: list, has_more: bool) -> dict[str, Any]:
    """A list object's `first_id`, `last_id` and `has_more`."""
    return {"first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None, "has_more": has_more}


def cursor_page(session, table, visible: Callable[[Any], Any], query: CursorQuery, extra=()) -> tuple[list, bool]:
    """A page of `table`'s rows that `visible` allows, ordered by (created_at, id),
    continuing after the row `query.after` names; and whether more follow."""
    columns = (table.created_at, table.id)
    statement = visible(select(table)).where(*extra)
    if query.after is not None:
        anchor = session.scalars(visible(select(table)).where(table.id == query.after)).first()
        if anchor is None:  # a well-formed id that names nothing here: not found, as a wrong id in a path is
            raise NotFound(f"after: no object {query.after!r} to continue after", field="after")
        later = query.order == "asc"
        ahead = [column > getattr(anchor, column.key) if later else column < getattr(anchor, column.key)
                 for column in columns]
        statement = statement.where(or_(ahead[0], and_(columns[0] == anchor.created_at, ahead[1])))
    order = [column.asc() if query.order == "asc" else column.desc() for column in columns]
    rows = list(session.scalars(statement.order_by(*order).limit(query.limit + 1)))
    return rows[:query.limit], len(rows) > query.limit
