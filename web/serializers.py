"""Jobs and items as the JSON the API promises."""
from __future__ import annotations

from datetime import datetime

from flask import url_for

from shared.ledger import Counts
from shared.orm import Job, JobItem


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_links(job_id: str) -> dict[str, str]:
    return {
        "self": url_for("api.get_job", job_id=job_id),
        "items": url_for("api.list_items", job_id=job_id),
        "cancel": url_for("api.cancel_job", job_id=job_id),
    }


def job_to_dict(job: Job, counts: Counts) -> dict:
    return {
        "id": job.id,
        "model": job.model,
        "task": job.task,
        "state": job.state.value,
        "priority": job.priority,
        "counts": counts.as_dict(),
        "progress": round(counts.progress, 6),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": job.error,
        "params": job.params,
        "links": job_links(job.id),
    }


def item_output(item: JobItem) -> dict | None:
    if item.output_text is not None:
        return {"text": item.output_text}
    if item.output_key is not None:
        return {"image_url": url_for("api.get_item_output", job_id=item.job_id, index=item.index)}
    return None


def item_to_dict(item: JobItem) -> dict:
    return {
        "index": item.index,
        "state": item.state.value,
        "prompt": item.prompt,
        "seed": item.seed,
        "output": item_output(item),
        "error": item.error,
        "attempts": item.attempts,
        "started_at": iso(item.started_at),
        "finished_at": iso(item.finished_at),
    }
