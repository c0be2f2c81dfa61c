"""A finished batch's output and error files, streamed from the ledger.

Requests are read a page at a time per genq job (the (job_id, first_index) index), each
page with the items that answer it (one range read of the items' (job_id, idx) key);
lines go to storage in parts (`shared.openai_files.PartWriter`). Memory holds one page,
never the file: a 50,000-line batch of images costs what one page of it costs.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import openai_shapes as shapes
from shared.model_files import TokenCounter
from shared.openai_files import PartWriter, Written
from shared.openai_orm import OpenAIBatch, OpenAIBatchJob, OpenAIBatchRequest
from shared.orm import ItemState, JobItem

PAGE_REQUESTS = 200


def derived_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file, the same each time it is written, so a
    finalization that is interrupted and done again replaces its own parts."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


@dataclass
class BatchFiles:
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output: Written | None = None
    errors: Written | None = None


def write_batch_files(session: Session, storage, batch: OpenAIBatch, tokens: TokenCounter) -> BatchFiles:
    result = BatchFiles()
    output = PartWriter(storage, derived_file_id(batch.id, "output"))
    errors = PartWriter(storage, derived_file_id(batch.id, "error"))
    job_ids = session.scalars(select(OpenAIBatchJob.job_id).where(OpenAIBatchJob.batch_id == batch.id)
                              .order_by(OpenAIBatchJob.job_id)).all()
    for job_id in job_ids:
        for request, items in requests_with_items(session, job_id):
            line, ok = shape_request(batch, request, items, storage, tokens, result)
            (output if ok else errors).write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    result.output, result.errors = output.close(), errors.close()
    return result


# Rows, not ORM objects: a page is read, written out and dropped (nothing to track).
REQUEST_COLUMNS = (OpenAIBatchRequest.line, OpenAIBatchRequest.custom_id, OpenAIBatchRequest.job_id,
                   OpenAIBatchRequest.first_index, OpenAIBatchRequest.n, OpenAIBatchRequest.model,
                   OpenAIBatchRequest.shaping)
ITEM_COLUMNS = (JobItem.index, JobItem.state, JobItem.prompt, JobItem.output_text, JobItem.output_key, JobItem.error,
                JobItem.finished_at)


def requests_with_items(session: Session, job_id: str) -> Iterator[tuple[Any, list[Any]]]:
    """Each request of one job, with its items in order, a page at a time."""
    start = 0
    while True:
        page = session.execute(
            select(*REQUEST_COLUMNS).where(OpenAIBatchRequest.job_id == job_id, OpenAIBatchRequest.first_index >= start)
            .order_by(OpenAIBatchRequest.first_index).limit(PAGE_REQUESTS)).all()
        if not page:
            return
        last = page[-1].first_index + page[-1].n - 1
        items = {item.index: item for item in session.execute(
            select(*ITEM_COLUMNS).where(JobItem.job_id == job_id, JobItem.index >= page[0].first_index,
                                        JobItem.index <= last))}
        for request in page:
            yield request, [items[i] for i in range(request.first_index, request.first_index + request.n) if i in items]
        start = last + 1


def shape_request(batch: OpenAIBatch, request: Any, items: list[Any], storage,
                  tokens: TokenCounter, result: BatchFiles) -> tuple[dict, bool]:
    """The request's line and whether it goes to the output file (else the error file);
    counts it in `result`."""
    line_id = f"batch_req_{batch.id.removeprefix('batch_')}_{request.line}"
    request_id = f"req_{request.job_id}_{request.first_index}"
    failed = next((item for item in items if item.state == ItemState.FAILED), None)
    if failed is not None:
        result.failed += 1
        choice = f"choice {failed.index - request.first_index}: " if request.n > 1 else ""
        return shapes.failed_line(line_id, request.custom_id, request_id, choice + (failed.error or "failed")), False
    if len(items) < request.n or any(item.state != ItemState.SUCCEEDED for item in items):
        result.failed += 1
        return shapes.stopped_line(line_id, request.custom_id, batch.stop_reason), False
    created = int(max(item.finished_at for item in items if item.finished_at).timestamp()) if items else 0
    try:
        body = response_body(batch.endpoint, request, items, created, storage, tokens, result)
    except Exception as exc:  # an image missing from storage: this request fails, the others stand
        result.failed += 1
        return shapes.failed_line(line_id, request.custom_id, request_id, f"output unavailable: {exc}"), False
    result.completed += 1
    return shapes.output_line(line_id, request.custom_id, request_id, body), True


def response_body(endpoint: str, request: Any, items: list[Any], created: int, storage,
                  tokens: TokenCounter, result: BatchFiles) -> dict:
    if endpoint == shapes.IMAGES:
        return shapes.images_body(created, [base64.b64encode(storage.get(item.output_key)).decode()
                                            for item in items])
    shaping = request.shaping or {}
    choices = []
    for item in items:
        text, stopped = shapes.apply_stop(item.output_text or "", shaping.get("stop"))
        count = tokens.count(request.model, text)  # uncut, it is the whole generation's budget too
        choices.append(shapes.Choice(text, shapes.finish_reason(stopped, count, shaping.get("max_tokens")), count))
    prompt_tokens = shaping.get("prompt_tokens")  # counted when the line was checked
    if prompt_tokens is None:  # a model whose prompts the web did not count
        per_prompt = shaping.get("per_prompt") or len(items)  # a list of prompts: n items each, in order
        prompt_tokens = sum(tokens.count(request.model, item.prompt, special=True) for item in items[::per_prompt])
    result.input_tokens += prompt_tokens
    result.output_tokens += sum(choice.tokens for choice in choices)
    response_id = f"{request.job_id}-{request.first_index}"
    make = shapes.chat_body if endpoint == shapes.CHAT_COMPLETIONS else shapes.completion_body
    return make(response_id, request.model, created, choices, prompt_tokens)
