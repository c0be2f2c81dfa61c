"""Liveness and readiness."""
from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from web.context import db, genq

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz():
    checks = {"database": _check(lambda: db().execute(text("SELECT 1"))), "redis": _check(_ping_redis)}
    ready = all(value == "ok" for value in checks.values())
    return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), 200 if ready else 503


def _ping_redis() -> None:
    with genq().celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        connection.default_channel.client.ping()


def _check(probe) -> str:
    try:
        probe()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
