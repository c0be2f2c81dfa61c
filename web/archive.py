"""GET /v1/jobs/<id>/archive: all of a job's results as one zip, streamed as it is written.

The zip holds `job.json` (the job as GET /v1/jobs/<id> answers it), `items.jsonl` (one
line per item: index, prompt, seed, state, text, error, and the image's name in the
zip) and, for image models, `images/<index>.png`. Items are read a page at a time and
each image is read from storage as its entry is written (zipstream-ng writes entries
with data descriptors, so no size is needed up front and nothing is held whole): the
web process holds one page of rows and one image, whatever the job's size. An archive
of a running job holds what is finished when each page is read.

The view is added to the /v1 blueprint (`web.api.api`): the same API key, rate limit
and OpenAPI document as every other /v1 operation.
"""
from __future__ import annotations

import json
import zipfile
from typing import Iterator

from flask import Response
from zipstream import ZipStream

from shared.orm import Job, JobItem
from shared.registry import Task
from web import queries
from web.api import JOB_ID, NO_JOB, api
from web.auth import current_principal
from web.context import GenqContext, db, genq
from web.operations import Reply
from web.response_models import JobResponse

ZIP = "application/zip"


@api.operation(
    "GET", "/jobs/<job_id>/archive", "Download all of a job's results", tag="jobs",
    description="A zip, streamed: `job.json` (the job), `items.jsonl` (one line per item: index, prompt, seed, "
    "state, text, error, image) and, for image models, `images/<index>.png` for each finished item. "
    "Of a running job, what is finished as it is read.",
    params=(JOB_ID,),
    responses={200: Reply("The archive.", media_types={ZIP: {"type": "string", "contentMediaType": ZIP}}),
               404: NO_JOB},
)
def get_job_archive(job_id: str):
    job, counts = queries.find_job_with_counts(db(), current_principal(), job_id)
    summary = JobResponse.of(job, counts).model_dump(mode="json")
    headers = {"Content-Disposition": f'attachment; filename="genq-{job.id}.zip"', "Cache-Control": "no-store"}
    return Response(archive_chunks(genq(), job, summary), mimetype=ZIP, headers=headers, direct_passthrough=True)


def archive_chunks(ctx: GenqContext, job: Job, summary: dict) -> Iterator[bytes]:
    """The zip's bytes: first the two JSON files, then the images a page at a time.

    It runs after the view has returned, so it reads through a session of its own,
    closed when the last byte is sent or the client goes away (the request's session
    is closed by then)."""
    with ctx.read_sessions() as session:
        archive = ZipStream(compress_type=zipfile.ZIP_DEFLATED)
        archive.add(json.dumps(summary, indent=2).encode() + b"\n", "job.json")
        archive.add(jsonl_lines(session, job, ctx.settings.max_page_size), "items.jsonl")
        yield from archive.all_files()
        if job.task == Task.TEXT_GENERATION.value:  # no images: no second pass over the items
            yield from archive.footer()
            return
        for page in item_pages(session, job, ctx.settings.max_page_size):
            for item in page:
                if item.output_key is not None:  # PNGs are compressed already: stored as they are
                    archive.add(ctx.storage.get(item.output_key), image_name(item), compress_type=zipfile.ZIP_STORED)
            yield from archive.all_files()
        yield from archive.footer()


def jsonl_lines(session, job: Job, page_size: int) -> Iterator[bytes]:
    for page in item_pages(session, job, page_size):
        for item in page:
            yield json.dumps(item_record(item), ensure_ascii=False).encode() + b"\n"


def item_record(item: JobItem) -> dict:
    return {"index": item.index, "prompt": item.prompt, "seed": item.seed, "state": item.state.value,
            "text": item.output_text, "error": item.error,
            "image": image_name(item) if item.output_key is not None else None}


def image_name(item: JobItem) -> str:
    return f"images/{item.index:06d}.png"


def item_pages(session, job: Job, size: int) -> Iterator[list[JobItem]]:
    """The job's items by index, GENQ_MAX_PAGE_SIZE at a time (each page one indexed
    range read, as GET .../items makes), expunged once read so the session holds none."""
    offset = 0
    while offset < job.total_items:
        page = queries.list_items(session, job, offset, size)
        if not page:
            return
        yield page
        for item in page:
            session.expunge(item)
        offset = page[-1].index + 1

