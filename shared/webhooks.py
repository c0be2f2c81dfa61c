"""Webhooks, as the Standard Webhooks specification (standardwebhooks.com) lays them out.

A job's final state is an event (`job.completed`, `job.failed`, `job.cancelled`). Where
the job names a `webhook` (or, failing that, its tenant has a default endpoint, set with
`genq webhooks set`), `record_job_events` writes one delivery row per event in the same
transaction that settles the job (the outbox), so an event is never lost and never
sent for a state that was not committed. The deliverer (`worker.deliverer`, in the
reconciler's process) sends it, signed with the tenant's `whsec_...` secret (or
GENQ_WEBHOOK_SECRET): headers `webhook-id` (the delivery's id, the same on every
retry), `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
id.timestamp.body>`).

Where a delivery may go (SSRF guard): http and https only, a host on
GENQ_WEBHOOK_ALLOWED_HOSTS when that is set, and, unless GENQ_WEBHOOK_ALLOW_PRIVATE, no
address that is loopback, private, link-local (cloud metadata: 169.254.169.254), CGNAT,
unique-local, multicast, reserved or unspecified, nor an IPv4-mapped one of those. The
URL is checked at submit; at delivery the host is resolved, every address checked, and
the connection made to that very address (`resolve_allowed`), so a DNS answer that
changes in between cannot redirect it.
"""
from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
import uuid
from datetime import datetime
from typing import Any, Iterable
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from shared.errors import InvalidRequest
from shared.orm import Job, JobState, utcnow
from shared.webhook_orm import DeliveryState, TenantWebhook, WebhookDelivery

EVENTS = ("job.completed", "job.failed", "job.cancelled")
EVENT_OF_STATE = {JobState.SUCCEEDED: "job.completed", JobState.FAILED: "job.failed",
                  JobState.CANCELLED: "job.cancelled"}
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
CGNAT = ipaddress.ip_network("100.64.0.0/10")


class WebhookRefused(InvalidRequest):
    """A webhook URL genq will not call; the message says why."""


# --- secrets and signatures --------------------------------------------------------------
def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_delivery_id() -> str:
    return "msg_" + uuid.uuid4().hex


def signed_headers(secret: str, delivery_id: str, body: str, at: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed at `at`."""
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, at, body),
    }


# --- where a webhook may go ----------------------------------------------------------------
def is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private (RFC 1918, unique-local fc00::/7), link-local, CGNAT, multicast,
    reserved or unspecified; an IPv4-mapped IPv6 address is judged by its IPv4 address."""
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return is_internal(mapped)
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified or address in CGNAT)


def check_url(url: str, settings, field: str = "webhook.url") -> None:
    """What can be known of `url` without resolving it: scheme, host, allow-list, and a
    literal address (or `localhost`) that is internal."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as exc:
        raise WebhookRefused(f"{field}: not a URL ({exc})", field=field) from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"{field}: only http and https URLs are called (not {parts.scheme or 'none'!r})",
                             field=field)
    host = (parts.hostname or "").lower()
    if not host:
        raise WebhookRefused(f"{field}: the URL names no host", field=field)
    allowed = [name.lower() for name in settings.webhook_allowed_hosts]
    if allowed and host not in allowed:
        raise WebhookRefused(f"{field}: host {host!r} is not in GENQ_WEBHOOK_ALLOWED_HOSTS", field=field)
    if settings.webhook_allow_private:
        return
    if host == "localhost" or host.endswith(".localhost"):
        raise WebhookRefused(f"{field}: {host!r} is this machine (GENQ_WEBHOOK_ALLOW_PRIVATE=1 allows it)",
                             field=field)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked where it resolves, at delivery
    if is_internal(address):
        raise WebhookRefused(f"{field}: {host} is an internal address (GENQ_WEBHOOK_ALLOW_PRIVATE=1 allows it)",
                             field=field)


def resolve_allowed(host: str, port: int, allow_private: bool) -> str:
    """The address to connect to for `host`: every address it resolves to must be
    allowed (one internal answer refuses the host), and the first is used."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookRefused(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow_private:
        internal = [a for a in addresses if is_internal(ipaddress.ip_address(a.split("%", 1)[0]))]
        if internal:
            raise WebhookRefused(f"{host} resolves to internal address {internal[0]}; refused "
                                 "(GENQ_WEBHOOK_ALLOW_PRIVATE=1 allows it)")
    return addresses[0]


# --- endpoints and the outbox --------------------------------------------------------------
def job_webhook(url: str, events: Iterable[str] | None) -> dict[str, Any]:
    """What a job stores of its `webhook` request."""
    return {"url": url, "events": list(dict.fromkeys(events or EVENTS))}


def signing_secret(session: Session, tenant: str, settings) -> str | None:
    row = session.get(TenantWebhook, tenant)
    if row is not None:
        return row.secret
    return settings.webhook_secret.get_secret_value() if settings.webhook_secret else None


def set_tenant_endpoint(session: Session, tenant: str, url: str | None, events: Iterable[str] | None,
                        rotate: bool = False) -> tuple[TenantWebhook, str | None]:
    """Set (or, with url None, clear) a tenant's default endpoint; make its secret on first
    use (or anew with `rotate`). Returns the row and the new secret, if one was made: it
    is shown once."""
    row = session.get(TenantWebhook, tenant)
    made = None
    if row is None:
        row = TenantWebhook(tenant=tenant, secret=new_secret(), events=list(EVENTS), created_at=utcnow())
        session.add(row)
        made = row.secret
    elif rotate:
        row.secret = made = new_secret()
    row.url = url
    row.events = list(dict.fromkeys(events or EVENTS))
    row.disabled_at = None
    return row, made


def rotate_secret(session: Session, tenant: str) -> str:
    """A new signing secret for `tenant`, its endpoint and events kept as they are."""
    row = session.get(TenantWebhook, tenant)
    if row is None:
        return set_tenant_endpoint(session, tenant, None, None)[1]
    row.secret = new_secret()
    return row.secret


def record_job_events(session: Session, settled: dict[Job, tuple[JobState, dict[str, int], str | None]]) -> int:
    """In the transaction that settles the jobs: one delivery per job whose final state is
    an event its endpoint asked for. Reads the tenants' defaults only for jobs without a
    webhook of their own. Returns how many deliveries were written."""
    tenants = {job.tenant for job in settled if not job.webhook}
    defaults = {}
    if tenants:
        defaults = {row.tenant: row for row in session.scalars(
            select(TenantWebhook).where(TenantWebhook.tenant.in_(tenants)))
            if row.url and row.disabled_at is None}
    now, written = utcnow(), 0
    for job, (state, counts, error) in settled.items():
        event = EVENT_OF_STATE.get(state)
        default = defaults.get(job.tenant)
        target = job.webhook or ({"url": default.url, "events": default.events} if default else None)
        if event is None or not target or event not in target["events"]:
            continue
        payload = {"type": event, "timestamp": now.isoformat(), "data": {
            "id": job.id, "state": state.value, "model": job.model, "counts": counts, "error": error,
            "finished_at": (job.finished_at or now).isoformat(), "links": {"self": f"/v1/jobs/{job.id}"}}}
        session.add(WebhookDelivery(id=new_delivery_id(), tenant=job.tenant, job_id=job.id, event=event,
                                    url=target["url"], from_tenant_default=not job.webhook, payload=payload,
                                    state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=now,
                                    created_at=now))
        written += 1
    return written


def deliveries_of_job(session: Session, job_id: str) -> list[WebhookDelivery]:
    return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
                                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)))
