"""`GET /v1/jobs/<id>/webhooks`: every delivery of a job's events and every attempt of
each (when, what the endpoint answered or why nothing did), read from the outbox."""
from __future__ import annotations

from pydantic import AwareDatetime, Field
from sqlalchemy import select

from shared.webhook_orm import WebhookAttempt, WebhookDelivery
from shared.webhooks import deliveries_of_job
from web import queries
from web.api import JOB_ID, NO_JOB
from web.auth import current_principal, require_api_key
from web.context import db
from web.operations import DocumentedBlueprint, Reply
from web.response_models import _Response

webhooks = DocumentedBlueprint("webhooks", __name__, url_prefix="/v1", secured=True)
webhooks.before_request(require_api_key)


class WebhookAttemptInfo(_Response):
    attempted_at: AwareDatetime
    status_code: int | None = Field(description="What the endpoint answered; null when it did not answer.")
    error: str | None = Field(description="Why the attempt failed without an answer (timeout, refused address...).")
    duration_ms: int = Field(ge=0)

    @classmethod
    def of(cls, row: WebhookAttempt) -> "WebhookAttemptInfo":
        return cls(attempted_at=row.attempted_at, status_code=row.status_code, error=row.error,
                   duration_ms=row.duration_ms)


class WebhookDeliveryInfo(_Response):
    id: str = Field(description="The `webhook-id` header of every attempt.")
    event: str
    url: str
    state: str = Field(description="pending, delivered or failed.")
    attempts: list[WebhookAttemptInfo]
    next_attempt_at: AwareDatetime | None
    last_error: str | None
    created_at: AwareDatetime

    @classmethod
    def of(cls, row: WebhookDelivery, attempts: list[WebhookAttempt]) -> "WebhookDeliveryInfo":
        return cls(id=row.id, event=row.event, url=row.url, state=row.state,
                   attempts=[WebhookAttemptInfo.of(a) for a in attempts], next_attempt_at=row.next_attempt_at,
                   last_error=row.last_error, created_at=row.created_at)


class WebhookDeliveryListResponse(_Response):
    deliveries: list[WebhookDeliveryInfo]


@webhooks.operation(
    "GET", "/jobs/<job_id>/webhooks", "List a job's webhook deliveries", tag="jobs",
    description="Each event sent (or to be sent) for the job, with every attempt.",
    params=(JOB_ID,), responses={200: Reply("The deliveries.", WebhookDeliveryListResponse), 404: NO_JOB},
)
def list_job_webhooks(job_id: str):
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    deliveries = deliveries_of_job(session, job.id)
    attempts: dict[str, list[WebhookAttempt]] = {}
    if deliveries:
        for attempt in session.scalars(select(WebhookAttempt)
                                       .where(WebhookAttempt.delivery_id.in_([d.id for d in deliveries]))
                                       .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)):
            attempts.setdefault(attempt.delivery_id, []).append(attempt)
    return WebhookDeliveryListResponse(
        deliveries=[WebhookDeliveryInfo.of(d, attempts.get(d.id, [])) for d in deliveries]).reply()
