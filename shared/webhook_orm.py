"""The ORM of webhooks (tables of migration 0007): each tenant's endpoint and signing
secret, the outbox of deliveries (one row per event and endpoint, written in the
transaction that made the event happen), and every attempt to deliver one.

Only `shared.webhooks` writes these rows.
"""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.orm import Base, utcnow


class DeliveryState(str, enum.Enum):
    PENDING = "pending"  # waiting for its next attempt (`next_attempt_at`)
    DELIVERED = "delivered"  # a 2xx answered
    FAILED = "failed"  # retries spent, the endpoint answered 410, or it is disabled


class TenantWebhook(Base):
    """A tenant's signing secret (`whsec_...`, made by `genq webhooks set`; it signs every
    delivery to the tenant's endpoints) and its default endpoint, used for jobs that name
    none. An endpoint that answers 410 Gone is disabled (`disabled_at`)."""

    __tablename__ = "tenant_webhooks"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WebhookDelivery(Base):
    """One event for one endpoint. Its id is the `webhook-id` header of every attempt, so
    a receiver can drop a repeat (delivery is at least once)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    from_tenant_default: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_job", "job_id", "created_at"),
    )


class WebhookAttempt(Base):
    """One try: when, what the endpoint answered (or why nothing did), how long it took."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempted_at"),)
