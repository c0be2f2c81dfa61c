"""What the OpenAI-compatible routes share: blueprints that need an API key like /v1/jobs,
OpenAI's error envelope, cursor pages and timestamps.

Errors on these routes are `{"error": {"message", "type", "param", "code"}}` (what the
`openai` package reads), from the same typed errors as the rest of the API. The SDK
retries 408, 409, 429 and 5xx: a refusal that a retry cannot change is a 400 or 404.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select
from werkzeug.exceptions import HTTPException

from shared.errors import GenqError, InvalidRequest
from web.auth import require_api_key
from web.request_models import _PageQuery

ERROR_TYPES = {401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, code: str, message: str, param: str | None = None, headers: dict | None = None):
    error_type = "server_error" if status >= 500 else ERROR_TYPES.get(status, "invalid_request_error")
    response = jsonify({"error": {"message": message, "type": error_type, "param": param, "code": code}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _genq_error(exc: GenqError):
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="genq"'
    return openai_error(exc.status, exc.code, exc.message, exc.field, headers)


def _http_error(exc: HTTPException):
    code = (exc.name or "error").lower().replace(" ", "_")
    headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
    return openai_error(exc.code or 500, code, exc.description or exc.name, None, headers)


def openai_blueprint(name: str, import_name: str) -> Blueprint:
    """A /v1 blueprint whose views need an API key and answer errors in OpenAI's envelope."""
    blueprint = Blueprint(name, import_name, url_prefix="/v1")
    blueprint.before_request(require_api_key)
    blueprint.register_error_handler(GenqError, _genq_error)
    blueprint.register_error_handler(HTTPException, _http_error)
    return blueprint


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


def cursor_page(session, table, visible: Callable[[Any], Any], query: CursorQuery, extra=()) -> tuple[list, bool]:
    """A page of `table`'s rows that `visible` allows, ordered by (created_at, id),
    continuing after the row `query.after` names; and whether more follow."""
    columns = (table.created_at, table.id)
    statement = visible(select(table)).where(*extra)
    if query.after is not None:
        anchor = session.scalars(visible(select(table)).where(table.id == query.after)).first()
        if anchor is None:
            raise InvalidRequest(f"after: no object {query.after!r} to continue after", field="after")
        later = query.order == "asc"
        ahead = [column > getattr(anchor, column.key) if later else column < getattr(anchor, column.key)
                 for column in columns]
        statement = statement.where(or_(ahead[0], and_(columns[0] == anchor.created_at, ahead[1])))
    order = [column.asc() if query.order == "asc" else column.desc() for column in columns]
    rows = list(session.scalars(statement.order_by(*order).limit(query.limit + 1)))
    return rows[:query.limit], len(rows) > query.limit
