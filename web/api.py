"""The /v1 API: thin views that validate, commit, then send a wake-up (ids only)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import IntegrityError

from shared import ledger
from shared.errors import Conflict, InvalidRequest, QuotaExceeded
from shared.orm import Job, JobState
from shared.queue import send_wakeup
from shared.schemas import validate_job_request
from web import idempotency, queries
from web.auth import current_principal, require_api_key
from web.bodies import json_body
from web.context import db, genq
from web.serializers import item_to_dict, job_links, job_to_dict

QUOTA_RETRY_AFTER_SECONDS = 30
MAX_ITEM_INDEX = 2**31 - 1  # the column is an INTEGER: a larger index is a 404, never an overflow

api = Blueprint("api", __name__, url_prefix="/v1")
api.before_request(require_api_key)


def _int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", field=name) from None
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"{name} must be between {minimum} and {maximum}", field=name)
    return value


@api.post("/jobs")
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
    job = ledger.create_job(
        session,
        tenant=tenant,
        model=job_request.spec.name,
        task=job_request.spec.task.value,
        params=job_request.params,
        inputs=job_request.inputs,
        priority=job_request.priority,
        idempotency_key=key,
        request_hash=fingerprint if key is not None else None,
    )
    try:
        session.commit()
    except IntegrityError:  # the same key, committed by a concurrent request
        session.rollback()
        return _accepted(idempotency.replay(session, tenant, key, fingerprint), replayed=True)
    send_wakeup(ctx.celery, job.model)
    return _accepted(job)


def check_pending_quota(session, tenant: str, new_items: int) -> None:
    cap = genq().settings.max_pending_items_per_tenant
    pending = queries.pending_items_of_tenant(session, tenant)
    if pending + new_items > cap:
        raise QuotaExceeded(
            f"tenant {tenant!r} has {pending} pending items; {new_items} more would pass the limit of {cap}. "
            "Retry when some have run.", field="prompts", retry_after=QUOTA_RETRY_AFTER_SECONDS)


def _accepted(job: Job, replayed: bool = False):
    response = jsonify({"id": job.id, "state": job.state.value, "links": job_links(job.id)})
    response.status_code = 202
    response.headers["Location"] = job_links(job.id)["self"]
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@api.get("/jobs")
def list_jobs():
    settings = genq().settings
    raw_state = request.args.get("state")
    try:
        state = JobState(raw_state) if raw_state is not None else None
    except ValueError:
        allowed = ", ".join(s.value for s in JobState)
        raise InvalidRequest(f"state must be one of {allowed}", field="state") from None
    limit = _int_arg("limit", settings.default_page_size, 1, settings.max_page_size)
    session = db()
    jobs, next_cursor = queries.list_jobs(session, current_principal(), state, limit, request.args.get("cursor"))
    counts = ledger.item_counts(session, [job.id for job in jobs])
    return jsonify({"jobs": [job_to_dict(job, counts[job.id]) for job in jobs], "next_cursor": next_cursor})


@api.get("/jobs/<job_id>")
def get_job(job_id: str):
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    return jsonify(job_to_dict(job, ledger.item_counts(session, [job.id])[job.id]))


@api.get("/jobs/<job_id>/items")
def list_items(job_id: str):
    settings = genq().settings
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    offset = _int_arg("offset", 0, 0, 10**9)
    limit = _int_arg("limit", settings.default_page_size, 1, settings.max_page_size)
    items = queries.list_items(session, job, offset, limit)
    next_offset = offset + limit if offset + limit < job.total_items else None
    return jsonify({"items": [item_to_dict(item) for item in items], "total": job.total_items, "next_offset": next_offset})


@api.get(f"/jobs/<job_id>/items/<int(max={MAX_ITEM_INDEX}):index>/output")
def get_item_output(job_id: str, index: int):
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    item = queries.find_item(session, job, index)
    if item.output_text is not None:
        return Response(item.output_text, mimetype="text/plain")
    if item.output_key is not None:
        data = genq().storage.get(item.output_key)
        return Response(data, mimetype="image/png")
    raise Conflict(f"item {index} has no output (state {item.state.value})", field="index")


@api.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    session = db()
    job = ledger.cancel_job(session, queries.find_job(session, current_principal(), job_id))
    session.commit()
    return jsonify(job_to_dict(job, ledger.item_counts(session, [job.id])[job.id]))


@api.post("/jobs/<job_id>/retry")
def retry_job(job_id: str):
    """Put a finished job's failed items back to pending, then wake a worker."""
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    ledger.retry_job(session, job)
    session.commit()
    send_wakeup(genq().celery, job.model)
    response = jsonify(job_to_dict(job, ledger.item_counts(session, [job.id])[job.id]))
    response.status_code = 202
    return response


@api.get("/models")
def list_models():
    models = [
        {
            "name": spec.name,
            "task": spec.task.value,
            "output": "image/png" if spec.task.is_image else "text/plain",
            "micro_batch_size": spec.micro_batch_size,
            "defaults": spec.defaults,
            "limits": {name: bounds.model_dump(exclude_none=True) for name, bounds in spec.limits.items()},
        }
        for spec in genq().registry
    ]
    return jsonify({"models": models})

