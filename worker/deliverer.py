"""The deliverer: sends the webhook outbox (`shared.webhooks`), never on a request's path.

It runs as a thread of the reconciler process (`genq reconcile`, which `genq up` runs),
looking for due deliveries every GENQ_WEBHOOK_POLL_SECONDS. Each delivery is taken
with a conditional UPDATE that pushes its `next_attempt_at` past the attempt's time
limit (a lease: two deliverers never send one attempt twice, and one that dies mid-way
leaves the delivery due again). Every attempt is recorded. Only a 2xx is success;
redirects are not followed; an attempt gives up after GENQ_WEBHOOK_TIMEOUT_SECONDS;
failures are retried after each wait of GENQ_WEBHOOK_RETRY_SECONDS (5 s, 5 min, 30 min,
2 h, 5 h, 10 h, 6 h: about a day) and then fail for good; a 410 Gone fails the delivery
at once and disables the tenant's default endpoint if that is where it went. Delivery
is at least once: a receiver drops repeats by `webhook-id`.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import urllib3
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import watch
from shared.db import session_factory, transaction
from shared.orm import utcnow
from shared.webhook_orm import DeliveryState, TenantWebhook, WebhookAttempt, WebhookDelivery
from shared.webhooks import WebhookRefused, resolve_allowed, signed_headers, signing_secret

log = logging.getLogger(__name__)
# What an attempt's outcome is called in genq_webhook_attempts_total, by the delivery's new state.
RESULTS = {DeliveryState.DELIVERED.value: "delivered", DeliveryState.PENDING.value: "retrying",
           DeliveryState.FAILED.value: "failed"}

BATCH = 20
USER_AGENT = "genq-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    status: int | None = None
    error: str | None = None
    milliseconds: int = 0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(url: str, body: str, headers: dict[str, str], timeout: float, allow_private: bool) -> Outcome:
    """POST `body` to `url`, connecting to the address `resolve_allowed` checked (with the
    URL's host name for the Host header, SNI and the certificate), following no redirect."""
    started = time.monotonic()
    try:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        address = resolve_allowed(parts.hostname or "", port, allow_private)
        limit = urllib3.Timeout(total=timeout)
        if https:
            pool = urllib3.HTTPSConnectionPool(address, port, timeout=limit, retries=False,
                                               server_hostname=parts.hostname, assert_hostname=parts.hostname)
        else:
            pool = urllib3.HTTPConnectionPool(address, port, timeout=limit, retries=False)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        with pool:
            response = pool.urlopen("POST", path, body=body.encode(), redirect=False, retries=False,
                                    headers={"Host": host, "Content-Type": "application/json",
                                             "User-Agent": USER_AGENT, **headers})
        return Outcome(status=response.status, milliseconds=_since(started))
    except WebhookRefused as exc:
        return Outcome(error=f"refused: {exc.message}", milliseconds=_since(started))
    except Exception as exc:  # urllib3 and socket raise many kinds; each is one failed attempt
        return Outcome(error=f"{type(exc).__name__}: {exc}"[:500], milliseconds=_since(started))


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


class Deliverer:
    def __init__(self, settings, sessions: sessionmaker[Session] | None = None):
        self.settings = settings
        self.sessions = sessions or session_factory(settings.database_url)

    def due(self) -> list[str]:
        with transaction(self.sessions) as session:
            return list(session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.state == DeliveryState.PENDING.value, WebhookDelivery.next_attempt_at <= utcnow())
                .order_by(WebhookDelivery.next_attempt_at).limit(BATCH)))

    def take(self, delivery_id: str) -> tuple[WebhookDelivery, str | None] | None:
        """Lease one due delivery (None if another deliverer took it) and its secret."""
        now = utcnow()
        with transaction(self.sessions) as session:
            taken = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == DeliveryState.PENDING.value,
                       WebhookDelivery.next_attempt_at <= now)
                .values(next_attempt_at=now + timedelta(seconds=self.settings.webhook_timeout_seconds + 30))
            ).rowcount
            if not taken:
                return None
            delivery = session.get(WebhookDelivery, delivery_id)
            return delivery, signing_secret(session, delivery.tenant, self.settings)

    def attempt(self, delivery: WebhookDelivery, secret: str | None) -> Outcome:
        if secret is None:
            return Outcome(error="no signing secret: run `genq webhooks set --tenant T` or set GENQ_WEBHOOK_SECRET")
        body = json.dumps(delivery.payload, separators=(",", ":"))
        headers = signed_headers(secret, delivery.id, body, utcnow())
        return post(delivery.url, body, headers, self.settings.webhook_timeout_seconds,
                    self.settings.webhook_allow_private)

    def record(self, delivery: WebhookDelivery, outcome: Outcome) -> str:
        """Store the attempt and what follows from it; returns the delivery's new state."""
        now = utcnow()
        attempts = delivery.attempts + 1
        waits = self.settings.webhook_retry_seconds
        values: dict = {"attempts": attempts, "last_error": outcome.error or (None if outcome.ok else
                                                                                f"answered {outcome.status}")}
        if outcome.ok:
            values.update(state=DeliveryState.DELIVERED.value, finished_at=now, next_attempt_at=None)
        elif outcome.status == 410:
            values.update(state=DeliveryState.FAILED.value, finished_at=now, next_attempt_at=None,
                          last_error="answered 410 Gone: the endpoint is disabled")
        elif attempts > len(waits):
            values.update(state=DeliveryState.FAILED.value, finished_at=now, next_attempt_at=None)
        else:
            values.update(next_attempt_at=now + timedelta(seconds=waits[attempts - 1]))
        with transaction(self.sessions) as session:
            session.add(WebhookAttempt(delivery_id=delivery.id, attempted_at=now, status_code=outcome.status,
                                       error=outcome.error, duration_ms=outcome.milliseconds))
            session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(**values))
            if outcome.status == 410 and delivery.from_tenant_default:
                session.execute(update(TenantWebhook).where(TenantWebhook.tenant == delivery.tenant,
                                                            TenantWebhook.url == delivery.url).values(disabled_at=now))
        return values.get("state", DeliveryState.PENDING.value)

    def run_once(self) -> int:
        """Attempt every due delivery once; returns how many were attempted."""
        attempted = 0
        for delivery_id in self.due():
            taken = self.take(delivery_id)
            if taken is None:
                continue
            delivery, secret = taken
            outcome = self.attempt(delivery, secret)
            state = self.record(delivery, outcome)
            watch.webhook_attempted(delivery.event, RESULTS[state])  # for /metrics (the reconciler's watch)
            log.info("webhook %s %s to %s: %s -> %s", delivery.id, delivery.event, delivery.url,
                     outcome.status or outcome.error, state)
            attempted += 1
        return attempted

    def run_forever(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("webhook delivery pass failed; trying again")
            stopping.wait(self.settings.webhook_poll_seconds)


def start_thread(settings) -> threading.Event:
    """The deliverer in a daemon thread of this process; set the returned event to stop it."""
    stopping = threading.Event()
    threading.Thread(target=Deliverer(settings).run_forever, args=(stopping,), name="genq-webhooks",
                     daemon=True).start()
    return stopping
