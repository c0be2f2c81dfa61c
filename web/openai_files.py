"""OpenAI-compatible files: POST/GET /v1/files, GET/DELETE /v1/files/<id>, GET
/v1/files/<id>/content. genq keeps files for the Batch API: uploads have purpose
`batch`, and each batch's output and error files have purpose `batch_output`.

A file belongs to the tenant of the key that wrote it; another tenant's file is a 404
like one that never existed. An expired file is gone at once (the reconciler removes
its content). Uploads may be up to GENQ_FILE_MAX_BYTES and are written to storage in
parts as they are read (`shared.openai_files`); downloads stream the parts back.
"""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from flask import Response, request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import or_

from shared.errors import InvalidRequest
from shared.keys import Principal
from shared.openai_files import delete_content, new_file_id, read_parts, write_lines
from shared.openai_orm import FilePurpose, OpenAIFile
from shared.orm import utcnow
from web.auth import current_principal
from web.context import db, genq
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
from web.operations import Param, Reply
from web.request_models import validate_query

files = openai_blueprint("openai_files", __name__)

FILE_ID = re.compile(r"^file-[0-9a-f]{32}\Z")
# OpenAI's bounds on `expires_after.seconds` (1 hour to 30 days): part of the protocol.
EXPIRES_AFTER_SECONDS = (3600, 30 * 24 * 3600)
MAX_FILENAME = 255


class FileObject(Strict):
    id: str
    object: Literal["file"] = "file"
    bytes: int = Field(ge=0)
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"] = "processed"
    expires_at: int | None
    status_details: str | None = None

    @classmethod
    def of(cls, row: OpenAIFile) -> FileObject:
        return cls(id=row.id, bytes=row.bytes, created_at=timestamp(row.created_at), filename=row.filename,
                   purpose=row.purpose, expires_at=timestamp(row.expires_at))


class FileList(Strict):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(Strict):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class FileListQuery(CursorQuery):
    purpose: str | None = Field(None, max_length=32)


def _no_default(schema: dict) -> None:
    schema.pop("default", None)


class FileUpload(BaseModel):
    """POST /v1/files as multipart/form-data, the fields the `openai` package sends."""

    model_config = ConfigDict(json_schema_extra={"dependentRequired": {
        "expires_after[anchor]": ["expires_after[seconds]"], "expires_after[seconds]": ["expires_after[anchor]"]}})
    file: bytes = Field(description="The JSONL file: one request a line (up to GENQ_FILE_MAX_BYTES).")
    purpose: Literal["batch"] = Field(description="genq keeps files for batches.")
    # A form field is there or not (never null): None is no part of the documented schema.
    expires_anchor: Literal["created_at"] | SkipJsonSchema[None] = Field(
        None, alias="expires_after[anchor]", json_schema_extra=_no_default)
    expires_seconds: Annotated[int, Field(ge=EXPIRES_AFTER_SECONDS[0], le=EXPIRES_AFTER_SECONDS[1])] | \
        SkipJsonSchema[None] = Field(None, alias="expires_after[seconds]", json_schema_extra=_no_default,
                                     description="The file expires this long after its upload (default "
                                     "GENQ_FILE_EXPIRY_SECONDS).")


FILE_ID_PARAM = Param("file_id", "path", {"type": "string"}, "The file's id (`file-...`).")
FILE_LINKS = {name: {"operationId": operation_id, "parameters": {"file_id": "$response.body#/id"}}
              for name, operation_id in (("GetFile", "get_file"), ("GetFileContent", "get_file_content"),
                                         ("DeleteFile", "delete_file"))}
NO_FILE = error_reply("No such file of this tenant, or it expired (`not_found`).")


def visible_files(principal: Principal):
    """The tenant's files that have not expired."""
    return tenant_scope(OpenAIFile, principal, or_(OpenAIFile.expires_at.is_(None), OpenAIFile.expires_at > utcnow()))


def find_file(session, principal: Principal, file_id: str) -> OpenAIFile:
    return find_visible(session, OpenAIFile, visible_files(principal), FILE_ID, file_id, "file")


def expiry_seconds(form, default: int) -> int:
    """`expires_after[anchor]` and `expires_after[seconds]` as the SDK sends them."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return default
    if anchor != "created_at":
        raise InvalidRequest("expires_after.anchor must be 'created_at'", field="expires_after.anchor")
    low, high = EXPIRES_AFTER_SECONDS
    if seconds is None or not seconds.isdigit() or not low <= int(seconds) <= high:
        raise InvalidRequest(f"expires_after.seconds must be an integer from {low} to {high}",
                             field="expires_after.seconds")
    return int(seconds)


@files.operation("POST", "/files", "Upload a file (for a batch)", tag="files",
                 request=FileUpload, request_media_type="multipart/form-data",
                 responses={200: Reply("The file.", FileObject, links=FILE_LINKS),
                            400: error_reply("A field is missing or wrong."),
                            413: error_reply("The file is larger than GENQ_FILE_MAX_BYTES.")})
def upload_file():
    ctx = genq()
    request.max_content_length = ctx.settings.file_max_bytes  # before the body is read: 413 beyond
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest("upload the file as multipart/form-data with fields 'file' and 'purpose'", field="file")
    upload = request.files.get("file")
    if upload is None:
        raise InvalidRequest("the multipart field 'file' is required", field="file")
    purpose = request.form.get("purpose")
    if purpose != FilePurpose.BATCH.value:
        raise InvalidRequest(f"purpose {purpose!r} is not supported: genq keeps files for batches "
                             "(purpose 'batch')", field="purpose")
    seconds = expiry_seconds(request.form, ctx.settings.file_expiry_seconds)
    file_id, now = new_file_id(), utcnow()
    written = write_lines(ctx.storage, file_id, upload.stream)
    filename = (upload.filename or "upload.jsonl").encode("utf-8", "replace").decode()[:MAX_FILENAME]
    row = OpenAIFile(id=file_id, tenant=current_principal().tenant, purpose=purpose, filename=filename,
                     bytes=written.bytes, lines=written.lines, parts=written.parts, created_at=now,
                     expires_at=now + timedelta(seconds=seconds))
    session = db()
    session.add(row)
    session.commit()
    return FileObject.of(row).reply()


@files.operation("GET", "/files", "List files, newest first", tag="files",
                 params=(*CURSOR_PARAMS, Param("purpose", "query", {"type": "string", "maxLength": 32},
                                               "Only files with this purpose (`batch`, `batch_output`).")),
                 responses={200: Reply("A page of files.", FileList), 400: error_reply("A parameter is wrong."),
                            404: error_reply("`after` names no file of this tenant.")})
def list_files():
    query = validate_query(FileListQuery, request.args, genq().settings)
    extra = (OpenAIFile.purpose == query.purpose,) if query.purpose else ()
    rows, has_more = cursor_page(db(), OpenAIFile, visible_files(current_principal()), query, extra)
    return FileList(data=[FileObject.of(row) for row in rows], **page_ids(rows, has_more)).reply()


@files.operation("GET", "/files/<file_id>", "Read a file's description", tag="files", params=(FILE_ID_PARAM,),
                 responses={200: Reply("The file.", FileObject), 404: NO_FILE})
def get_file(file_id: str):
    return FileObject.of(find_file(db(), current_principal(), file_id)).reply()


@files.operation("GET", "/files/<file_id>/content", "Download a file", tag="files", params=(FILE_ID_PARAM,),
                 responses={200: Reply("The file's bytes.", media_types={
                     "application/octet-stream": {"type": "string", "format": "binary"}}), 404: NO_FILE})
def get_file_content(file_id: str):
    row = find_file(db(), current_principal(), file_id)
    snapshot = OpenAIFile(id=row.id, parts=row.parts)  # the stream outlives the request's session
    return Response(read_parts(genq().storage, snapshot), mimetype="application/octet-stream",
                    headers={"Content-Length": str(row.bytes),
                             "Content-Disposition": f'attachment; filename="{row.id}.jsonl"'})


@files.operation("DELETE", "/files/<file_id>", "Delete a file", tag="files", params=(FILE_ID_PARAM,),
                 responses={200: Reply("The file is gone.", FileDeleted), 404: NO_FILE})
def delete_file(file_id: str):
    session = db()
    row = find_file(session, current_principal(), file_id)
    delete_content(genq().storage, row)
    session.delete(row)
    session.commit()
    return FileDeleted(id=file_id, deleted=True).reply()
